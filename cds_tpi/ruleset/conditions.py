"""The condition grammar of `where` as objects: one class per operator, found through `OPERATORS`.

Each operator owns its whole behaviour: it compiles itself to a durable-rules term, checks itself
(lint issues, never raising), names the fact fields it reads (the engine is sent no other field)
and the constraint every fact it can match shares (the prefilter), and evaluates itself in Python
against a fact (`cds-tpi explain`, and the differential oracle in tests/test_oracle.py that
compares this evaluation with the engine).

Python evaluation mirrors durable-rules on the facts the facts stage builds (numbers, strings,
lists of strings): a missing field fails every operator except `exists: false` and `none`; a field
present with the value None exists but equals and compares with nothing; numbers compare with
numbers and strings with strings (durable would also coerce "4" to 4: facts never carry such a
mix); `any`/`all`/`none` read list fields only.

Adding an operator = one class here, registered in OPERATORS, and its keyword in rule.schema.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..errors import RuleError
from .facttypes import FACT_FIELDS, VALUESET_FIELDS
from .issues import Issue, issue

MISSING = object()  # a value that cannot be resolved (an absent field, an unbound pattern)


# -- contexts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Env:
    """What a condition is evaluated against besides the fact: the rule's params, the terminology
    (value set names -> ids) and the facts already bound to earlier patterns (for `ref`)."""

    params: Mapping[str, Any]
    terminology: Any = None
    bindings: Mapping[str, dict] = None  # type: ignore[assignment]

    def bind(self, name: str, fact: dict) -> "Env":
        return Env(self.params, self.terminology, {**(self.bindings or {}), name: fact})


@dataclass(frozen=True)
class CheckContext:
    """What lint needs to check a condition: the rule's params, the terminology, the fields of the
    pattern's fact type, the present patterns before this one (name -> fact type), inside an `or`."""

    params: Mapping[str, Any]
    terminology: Any
    fields: frozenset
    earlier: Mapping[str, str]
    inside_or: bool = False


def resolve_valueset(name: str, terminology) -> str:
    """The id of a value set named in a rule; RuleError when there is none."""
    vid = terminology.resolve(name) if terminology else None
    if vid is None:
        raise RuleError(f"unknown value set '{name}'")
    return vid


def _vs_known(name, terminology) -> bool:
    return terminology is not None and terminology.resolve(name) is not None


# -- values: literal, {param}, {ref}, {mul} -------------------------------------------------------
class Value:
    """The right-hand side of a comparison."""

    def compile(self, params: Mapping):
        """The durable-rules expression (params inlined; refs stay symbolic)."""
        raise NotImplementedError

    def resolve(self, env: Env):
        """The value against one set of bindings, or MISSING."""
        raise NotImplementedError

    def check(self, ctx: CheckContext, pointer: tuple) -> list[Issue]:
        return []

    def refs(self) -> set[tuple[str, str]]:
        """(pattern, field) of each other pattern's fact this value reads."""
        return set()

    def ref_fields(self) -> set[str]:
        """Fields of other facts this value reads."""
        return {field for _, field in self.refs()}

    def is_literal_scalar(self) -> bool:
        return False


@dataclass(frozen=True)
class Literal(Value):
    value: Any

    def compile(self, params):
        return self.value

    def resolve(self, env):
        return self.value

    def is_literal_scalar(self) -> bool:
        return isinstance(self.value, (bool, str, int, float))

    def __str__(self) -> str:
        return repr(self.value) if isinstance(self.value, str) else str(self.value)


@dataclass(frozen=True)
class Param(Value):
    name: str

    def compile(self, params):
        return params[self.name]

    def resolve(self, env):
        return env.params.get(self.name, MISSING)

    def check(self, ctx, pointer):
        if self.name not in ctx.params:
            return [issue(pointer, f"unknown param '{self.name}' (declare it under params)")]
        return []

    def __str__(self) -> str:
        return f"param {self.name}"


@dataclass(frozen=True)
class Ref(Value):
    pattern: str
    field: str

    def compile(self, params):
        return {self.pattern: self.field}

    def resolve(self, env):
        fact = (env.bindings or {}).get(self.pattern)
        if fact is None:
            return MISSING
        return fact.get(self.field, MISSING)

    def check(self, ctx, pointer):
        ref = f"{self.pattern}.{self.field}"
        if self.pattern not in ctx.earlier:
            return [issue(pointer, f"ref '{ref}': no earlier (present) pattern '{self.pattern}' in this alternative")]
        if self.field not in FACT_FIELDS[ctx.earlier[self.pattern]]:
            return [issue(pointer, f"ref '{ref}': a {ctx.earlier[self.pattern]} fact has no field '{self.field}'")]
        return []

    def refs(self):
        return {(self.pattern, self.field)}

    def __str__(self) -> str:
        return f"{self.pattern}.{self.field}"


@dataclass(frozen=True)
class Mul(Value):
    left: Value
    right: Value

    def compile(self, params):
        left, right = self.left.compile(params), self.right.compile(params)
        if _number(left) and _number(right):
            # folded: durable's $mul of two constants read as an unexpected type now and then (error
            # 102 creating the ruleset; found by tests/test_oracle.py)
            return left * right
        if not isinstance(left, dict) and isinstance(right, dict):  # durable wants the reference on the left
            left, right = right, left
        return {"$mul": {"$l": left, "$r": right}}

    def resolve(self, env):
        a, b = self.left.resolve(env), self.right.resolve(env)
        if _number(a) and _number(b):
            return a * b
        return MISSING

    def check(self, ctx, pointer):
        return self.left.check(ctx, pointer) + self.right.check(ctx, pointer)

    def refs(self):
        return self.left.refs() | self.right.refs()

    def __str__(self) -> str:
        return f"{self.left} × {self.right}"


# The value registry: the key of a value mapping -> how to build it.
VALUES = {
    "param": lambda raw: Param(raw),
    "ref": lambda raw: Ref(*raw.partition(".")[::2]),
    "mul": lambda raw: Mul(parse_value(raw[0]), parse_value(raw[1])),
}


def parse_value(raw) -> Value:
    """A value as written in a rule (schema-valid): a literal, or a one-key mapping from VALUES."""
    if isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in VALUES:
        key, arg = next(iter(raw.items()))
        return VALUES[key](arg)
    return Literal(raw)


def _number(v) -> bool:
    return isinstance(v, (int, float))


def _comparable(a, b) -> bool:
    return (_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str))


def _shown(fact: dict, field: str) -> str:
    return f"{field} is {fact[field]!r}" if field in fact else f"{field} is absent"


# -- operators ------------------------------------------------------------------------------------
class Condition:
    """One operator applied to one field. `at` is its JSON path inside the pattern's `where`."""

    keyword: ClassVar[str]
    names_a_field: ClassVar[bool] = True
    field: str
    at: tuple

    def compile(self, params: Mapping, terminology) -> dict:
        """The durable-rules term."""
        raise NotImplementedError

    def check(self, ctx: CheckContext, pointer: tuple) -> list[Issue]:
        """Lint issues; `pointer` is the JSON path of the pattern's `where`."""
        return []

    def check_placement(self, ctx: CheckContext, pointer: tuple) -> list[Issue]:
        """Lint issues about where the operator is used (checked even when its field is unknown)."""
        return []

    def fields(self) -> set[str]:
        """Every fact field this condition reads (its own and those of referenced facts)."""
        return {self.field}

    def reads(self, terminology) -> dict[str, frozenset | None]:
        """What it reads of its own fact, per field: the values whose membership in that list field it
        tests (`any`, `all`, `none`; the engine is sent no other value, see compile.engine_view), or
        None when it reads the whole value (a comparison, `in`, `exists`). What it reads of other
        patterns' facts is in `refs`."""
        return {self.field: None}

    def refs(self) -> set[tuple[str, str]]:
        """(pattern, field) of each other pattern's fact it reads (a `ref` value)."""
        return set()

    def shared(self):
        """(field, constraint) every fact it matches meets - a literal, or "non-empty" - or None."""
        return None

    def blocking(self) -> tuple["Condition", ...]:
        """For a negation: the positive conditions any one of which blocks a fact (each compiled to a
        probe rule, see compile.py). Empty for the positive operators."""
        return ()

    def evaluate(self, fact: dict, env: Env) -> bool:
        """Does this fact meet the condition, given the bindings in env?"""
        raise NotImplementedError

    def describe(self, env: Env | None = None) -> str:
        """The condition in words, values resolved when env is given."""
        raise NotImplementedError

    def why_not(self, fact: dict, env: Env) -> str:
        """What the fact holds instead (for explain)."""
        return _shown(fact, self.field)


@dataclass(frozen=True)
class Comparison(Condition):
    """eq, ne, lt, lte, gt, gte: the field against a value."""

    field: str
    value: Value
    at: tuple = ()
    durable: ClassVar[str | None] = None
    symbol: ClassVar[str] = ""
    # durable-rules segfaults when a join on another fact's field by this operator is false (found
    # by the differential oracle, tests/test_oracle.py): only equality joins are allowed.
    joins_safely: ClassVar[bool] = False

    @classmethod
    def parse(cls, field, raw, at):
        return cls(field, parse_value(raw), at)

    def _compiled_value(self, params, terminology):
        expr = self.value.compile(params)
        if self.field in VALUESET_FIELDS and isinstance(expr, str) and expr != "unknown":
            expr = resolve_valueset(expr, terminology)
        return expr

    def compile(self, params, terminology):
        expr = self._compiled_value(params, terminology)
        return {self.field: expr} if self.durable is None else {self.durable: {self.field: expr}}

    def check(self, ctx, pointer):
        at = pointer + self.at
        out = self.value.check(ctx, at)
        if self.value.ref_fields() and not self.joins_safely:
            out.append(issue(at, f"'{self.keyword}' against a ref: durable-rules crashes (segfault) when such a join "
                                 "is false; refer to another pattern's field only for equality (see tests/test_oracle.py)"))
        v = self.value
        if (self.field in VALUESET_FIELDS and isinstance(v, Literal) and isinstance(v.value, str)
                and v.value != "unknown" and not _vs_known(v.value, ctx.terminology)):
            out.append(issue(at, f"unknown value set '{v.value}'"))
        return out

    def fields(self):
        return {self.field} | self.value.ref_fields()

    def refs(self):
        return self.value.refs()

    def _expected(self, env):
        value = self.value.resolve(env)
        if self.field in VALUESET_FIELDS and isinstance(value, str) and value != "unknown" and env.terminology:
            value = env.terminology.resolve(value) or value
        return value

    def evaluate(self, fact, env):
        actual = fact.get(self.field, MISSING)
        expected = self._expected(env)
        if actual is MISSING or expected is MISSING or actual is None or expected is None:
            return False
        if not _comparable(actual, expected):
            return False
        return self.holds(actual, expected)

    def holds(self, actual, expected) -> bool:
        raise NotImplementedError

    def describe(self, env=None):
        text = f"{self.field} {self.symbol} {self.value}"
        if env is not None and not isinstance(self.value, Literal):
            resolved = self._expected(env)
            text += f" (= {resolved!r})" if resolved is not MISSING else " (unresolved)"
        return text


@dataclass(frozen=True)
class Eq(Comparison):
    keyword: ClassVar[str] = "eq"
    symbol: ClassVar[str] = "="
    joins_safely: ClassVar[bool] = True

    def holds(self, a, b):
        return a == b

    def shared(self):
        # A value set field's literal is a name compiled to an id: no shared literal to filter on.
        if self.field not in VALUESET_FIELDS and self.value.is_literal_scalar():
            return self.field, self.value.value
        return None


@dataclass(frozen=True)
class Ne(Comparison):
    keyword: ClassVar[str] = "ne"
    durable: ClassVar[str] = "$neq"
    symbol: ClassVar[str] = "≠"

    def holds(self, a, b):
        return a != b


@dataclass(frozen=True)
class Lt(Comparison):
    keyword: ClassVar[str] = "lt"
    durable: ClassVar[str] = "$lt"
    symbol: ClassVar[str] = "<"

    def holds(self, a, b):
        return a < b


@dataclass(frozen=True)
class Lte(Comparison):
    keyword: ClassVar[str] = "lte"
    durable: ClassVar[str] = "$lte"
    symbol: ClassVar[str] = "≤"

    def holds(self, a, b):
        return a <= b


@dataclass(frozen=True)
class Gt(Comparison):
    keyword: ClassVar[str] = "gt"
    durable: ClassVar[str] = "$gt"
    symbol: ClassVar[str] = ">"

    def holds(self, a, b):
        return a > b


@dataclass(frozen=True)
class Gte(Comparison):
    keyword: ClassVar[str] = "gte"
    durable: ClassVar[str] = "$gte"
    symbol: ClassVar[str] = "≥"

    def holds(self, a, b):
        return a >= b


@dataclass(frozen=True)
class _Listed(Condition):
    """An operator with a list of literals: value set names on value set fields (resolved to ids)."""

    field: str
    values: tuple
    at: tuple = ()

    @classmethod
    def parse(cls, field, raw, at):
        return cls(field, tuple(raw), at)

    def ids(self, terminology, strict=True) -> list:
        """The values, value set names resolved (strict: an unknown name is a RuleError)."""
        if self.field not in VALUESET_FIELDS:
            return list(self.values)
        if strict:
            return [resolve_valueset(v, terminology) for v in self.values]
        return [(terminology.resolve(v) if terminology else None) or v for v in self.values]

    def check(self, ctx, pointer):
        if self.field not in VALUESET_FIELDS:
            return []
        at = pointer + self.at
        return [issue(at + (i,), f"unknown value set '{name}'")
                for i, name in enumerate(self.values) if not _vs_known(name, ctx.terminology)]


@dataclass(frozen=True)
class In(_Listed):
    """The field equals one of the listed literals."""

    keyword: ClassVar[str] = "in"

    def compile(self, params, terminology):
        ids = self.ids(terminology)
        return {"$or": [{self.field: v} for v in ids]} if len(ids) > 1 else {self.field: ids[0]}

    def evaluate(self, fact, env):
        actual = fact.get(self.field, MISSING)
        return actual is not MISSING and actual is not None and any(
            _comparable(actual, v) and actual == v for v in self.ids(env.terminology, strict=False))

    def describe(self, env=None):
        return f"{self.field} in [{', '.join(map(str, self.values))}]"


@dataclass(frozen=True)
class _ListOp(_Listed):
    """any / all / none: what a list field holds."""

    word: ClassVar[str] = ""

    def reads(self, terminology):
        return {self.field: frozenset(self.ids(terminology))}

    def _held(self, fact) -> list | None:
        actual = fact.get(self.field)
        return actual if isinstance(actual, list) else None

    def describe(self, env=None):
        return f"{self.field} has {self.word} of [{', '.join(self.values)}]"


@dataclass(frozen=True)
class Any_(_ListOp):
    keyword: ClassVar[str] = "any"
    word: ClassVar[str] = "any"

    def compile(self, params, terminology):
        ids = self.ids(terminology)
        inner = {"$or": [{"$i": v} for v in ids]} if len(ids) > 1 else {"$i": ids[0]}
        return {"$iany": {self.field: inner}}

    def shared(self):
        return (self.field, "non-empty") if self.field in VALUESET_FIELDS else None

    def evaluate(self, fact, env):
        held = self._held(fact)
        return held is not None and any(v in held for v in self.ids(env.terminology, strict=False))


@dataclass(frozen=True)
class All(_ListOp):
    keyword: ClassVar[str] = "all"
    word: ClassVar[str] = "all"

    def compile(self, params, terminology):
        terms = [{"$iany": {self.field: {"$i": v}}} for v in self.ids(terminology)]
        return terms[0] if len(terms) == 1 else {"$and": terms}

    def shared(self):
        return (self.field, "non-empty") if self.field in VALUESET_FIELDS else None

    def evaluate(self, fact, env):
        held = self._held(fact)
        return held is not None and all(v in held for v in self.ids(env.terminology, strict=False))


@dataclass(frozen=True)
class None_(_ListOp):
    """Holds none of the values (a missing field holds none). Never compiled to a durable term:
    each value becomes a probe rule (`blocking`), see compile.py."""

    keyword: ClassVar[str] = "none"
    word: ClassVar[str] = "none"

    def compile(self, params, terminology):
        raise RuleError("'none' is only allowed at the top level of a present pattern's where")

    def check_placement(self, ctx, pointer):
        if ctx.inside_or:
            return [issue(pointer + self.at, "'none' cannot be used inside 'or' (it is compiled to a probe rule)")]
        return []

    def blocking(self):
        return tuple(All(self.field, (v,), self.at) for v in self.values)

    def evaluate(self, fact, env):
        held = self._held(fact)
        return held is None or not any(v in held for v in self.ids(env.terminology, strict=False))


@dataclass(frozen=True)
class Exists(Condition):
    keyword: ClassVar[str] = "exists"
    field: str
    present: bool
    at: tuple = ()

    @classmethod
    def parse(cls, field, raw, at):
        return cls(field, bool(raw), at)

    def compile(self, params, terminology):
        return {"$ex" if self.present else "$nex": {self.field: 1}}

    def evaluate(self, fact, env):
        return (self.field in fact) == self.present

    def describe(self, env=None):
        return f"{self.field} {'is present' if self.present else 'is absent'}"


@dataclass(frozen=True)
class Or(Condition):
    """`or: [{...}, {...}]`: one of several where-mappings holds."""

    keyword: ClassVar[str] = "or"
    names_a_field: ClassVar[bool] = False
    alternatives: tuple  # of tuples of conditions
    at: tuple = ()
    field: str = "or"

    def compile(self, params, terminology):
        alts = []
        for conds in self.alternatives:
            terms = [c.compile(params, terminology) for c in conds]
            alts.append(terms[0] if len(terms) == 1 else {"$and": terms})
        return {"$or": alts}

    def check(self, ctx, pointer):
        inner = CheckContext(ctx.params, ctx.terminology, ctx.fields, ctx.earlier, inside_or=True)
        return [i for conds in self.alternatives for i in check_conditions(conds, inner, pointer)]

    def fields(self):
        return {f for conds in self.alternatives for c in conds for f in c.fields()}

    def reads(self, terminology):
        return merge_reads(c.reads(terminology) for conds in self.alternatives for c in conds)

    def refs(self):
        return {ref for conds in self.alternatives for c in conds for ref in c.refs()}

    def evaluate(self, fact, env):
        return any(all(c.evaluate(fact, env) for c in conds) for conds in self.alternatives)

    def describe(self, env=None):
        return " or ".join("(" + " and ".join(c.describe(env) for c in conds) + ")" for conds in self.alternatives)

    def why_not(self, fact, env):
        fields = sorted({f for conds in self.alternatives for c in conds for f in c.fields()})
        return ", ".join(_shown(fact, f) for f in fields)


def merge_reads(readings) -> dict[str, frozenset | None]:
    """Several `Condition.reads` as one: a field read whole by any of them is read whole, else the
    values any of them tests for."""
    out: dict[str, frozenset | None] = {}
    for reading in readings:
        for field, values in reading.items():
            if values is None or (field in out and out[field] is None):
                out[field] = None
            else:
                out[field] = out.get(field, frozenset()) | values
    return out


# The registry: YAML keyword -> class. `or` is a key of the where mapping, the others are operators.
OPERATORS: dict[str, type] = {c.keyword: c for c in (Eq, Ne, Lt, Lte, Gt, Gte, In, Any_, All, None_, Exists)}


def _operators(cond) -> dict:
    """A field's condition as {keyword: value}: a bare value (literal, param, ref, mul) means eq."""
    if isinstance(cond, dict) and not (set(cond) & set(VALUES)):
        return cond
    return {Eq.keyword: cond}


def parse_where(where: Mapping | None, at: tuple = ()) -> tuple[Condition, ...]:
    """The conditions of a (schema-valid) where mapping, in the order written."""
    out: list[Condition] = []
    for field, cond in (where or {}).items():
        if field == Or.keyword:
            out.append(Or(tuple(parse_where(sub, at + (Or.keyword, i)) for i, sub in enumerate(cond)), at + (Or.keyword,)))
            continue
        for keyword, raw in _operators(cond).items():
            cls = OPERATORS.get(keyword)
            if cls is None:
                raise RuleError(f"unknown operator '{keyword}' on field '{field}'")
            out.append(cls.parse(field, raw, at + (field, keyword)))
    return tuple(out)


def check_conditions(conds, ctx: CheckContext, pointer: tuple) -> list[Issue]:
    """Lint issues of a where's conditions; an unknown field is reported once, its operators skipped."""
    out: list[Issue] = []
    unknown: set[str] = set()
    for c in conds:
        out += c.check_placement(ctx, pointer)
        if c.names_a_field and c.field not in ctx.fields:
            if c.field not in unknown:
                unknown.add(c.field)
                out.append(issue(pointer + c.at[:-1], f"unknown field '{c.field}' (known: {', '.join(sorted(ctx.fields))})"))
            continue
        out += c.check(ctx, pointer)
    return out
