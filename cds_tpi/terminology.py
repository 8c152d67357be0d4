"""Value sets from rules/valuesets: membership by system|code, with whole-word text as a fallback.

A ValueSet may include concepts, other value sets (by canonical url) and exclude concepts.
Text patterns are root extensions with TEXT_MATCH_URL; they match whole words, case-insensitively.
A TEXT_EXCLUDE_URL extension names a longer phrase inside which the set's own patterns do not match
("pronator teres", a forearm muscle, keeps "teres" from placing a site at the shoulder).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RuleError
from .fhir.text import bounded_text

TEXT_MATCH_URL = "https://cds-tpi.example.org/fhir/StructureDefinition/text-match"
TEXT_EXCLUDE_URL = "https://cds-tpi.example.org/fhir/StructureDefinition/text-exclude"


_WORD = re.compile(r"[a-z0-9]+")


# An aside cannot contain "[": each match attempt stops at the next bracket, so dropping asides is
# linear (the former `\[[^\]]*\]` rescanned to the end from every "[" of an unclosed run: quadratic).
_ASIDE = re.compile(r"\[[^\[\]]*\]")


def _words(text: str) -> list[str]:
    """Lower-case words of a text (at most MAX_TEXT_CHARS of it); bracketed asides ("[any part except
    buttock]") are dropped."""
    return _WORD.findall(_ASIDE.sub(" ", bounded_text(text).lower()))


# Words and the punctuation that separates them, for negation scope. One token per match, no nested
# quantifiers: linear in the (bounded) text.
_TOKEN = re.compile(r"[a-z0-9]+|[,:;.!?()\n]")
_SENTENCE_END = frozenset(".;!?\n")
# Where a record's free text (a note, a procedure's name, an order's words) separates clauses: each is
# read for negation and matched on its own.
CLAUSES = re.compile(r"[.;\n]+")


MEMO_MAX = 50_000  # entries per memo: bounded by the distinct descriptions and texts one process sees


class Memo(dict):
    """A memo of a pure function of one key: memo[key] is compute(key), computed on first use; a memo that
    has grown past MEMO_MAX is emptied first. A hit is one dict look-up: no closure made and no call of
    ours (the memos below are read ~300 times an evaluation of benchmarks/evaluate.py's request; a
    closure per call was measurable)."""

    __slots__ = ("_compute",)

    def __init__(self, compute):
        super().__init__()
        self._compute = compute

    def __missing__(self, key):
        if len(self) > MEMO_MAX:
            self.clear()
        value = self[key] = self._compute(key)
        return value


@dataclass(frozen=True)
class _Tokens:
    words: list[str]
    gap: list[bool]      # punctuation between this word and the one before it
    sentence: list[int]  # which sentence each word is in


def _tokens(text: str) -> _Tokens:
    words, gap, sentence = [], [], []
    pending, s = False, 0
    for m in _TOKEN.finditer(_ASIDE.sub(" ", bounded_text(text).lower())):
        t = m.group()
        if not t[0].isalnum():
            pending = True
            if t in _SENTENCE_END and words and sentence[-1] == s:
                s += 1
            continue
        words.append(t)
        gap.append(pending)
        sentence.append(s)
        pending = False
    return _Tokens(words, gap, sentence)


class Cues(tuple):
    """Compiled negation cues: a tuple of word tuples whose hash is computed once. The cues are part of
    every `Terminology.affirmed` memo key, and a tuple hashes all its items each time (18 cue tuples:
    ~0.4 us, about 40 look-ups in one evaluation of benchmarks/evaluate.py's request)."""

    def __new__(cls, items=()):
        self = super().__new__(cls, items)
        self._hash = tuple.__hash__(self)
        return self

    def __hash__(self) -> int:
        return self._hash


@functools.lru_cache(maxsize=8)
def compile_cues(cues: tuple[str, ...]) -> Cues:
    """Negation cues (records.yaml text_negation_cues) as word tuples, longest first. Memoised: every
    evaluation's FactBuilder asks for the rulebook's cues (compiling them was ~13 us of a ~490 us facts
    stage, benchmarks/evaluate.py's request)."""
    out = {tuple(_words(c)) for c in cues}
    return Cues(sorted((c for c in out if c), key=lambda c: (-len(c), c)))


RXNORM, SNOMED, ICD10CM = "http://www.nlm.nih.gov/research/umls/rxnorm", "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm"
LOINC, CPT = "http://loinc.org", "http://www.ama-assn.org/go/cpt"
# Code systems as EHRs also send them: HL7 OIDs (HL7 terminology, "OID" identifiers of each CodeSystem:
# RxNorm 2.16.840.1.113883.6.88, SNOMED CT 2.16.840.1.113883.6.96, ICD-10-CM 2.16.840.1.113883.6.90,
# LOINC 2.16.840.1.113883.6.1, CPT 2.16.840.1.113883.6.12) and URIs with a trailing slash.
SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.88": RXNORM, "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM, "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.12": CPT,
    # WHO ICD-10 (non-US EHRs, some US feeds): read as the ICD-10-CM code of the same spelling. The two
    # share their categories (D68.0 von Willebrand disease, A41.9 sepsis, E11.9 type 2 diabetes); a WHO
    # code ICD-10-CM splits further (L03.1) matches only where a set lists that category.
    "http://hl7.org/fhir/sid/icd-10": ICD10CM, "urn:oid:2.16.840.1.113883.6.3": ICD10CM,
}


NDC = "http://hl7.org/fhir/sid/ndc"
_NDC_SEGMENTS = {(4, 4, 2): (5, 4, 2), (5, 3, 2): (5, 4, 2), (5, 4, 1): (5, 4, 2), (5, 4, 2): (5, 4, 2),
                 (4, 4): (5, 4), (5, 3): (5, 4), (5, 4): (5, 4)}


def normalize_ndc(code: str) -> str:
    """An NDC as one unambiguous digit string: a package code (labeler-product-package) as the 11-digit
    5-4-2 HIPAA form ("0003-0293-05", "00003-0293-05", "00003029305" -> "00003029305"), a product code
    (labeler-product) as 9 digits, 5-4 ("0003-0293" -> "000030293"). Each hyphenated segment is
    zero-padded to its 5-4-2 width, so the 10-digit label forms 4-4-2, 5-3-2 and 5-4-1 all land on the
    same code. An 11- or 9-digit code without hyphens is already in that form; anything else (a 10-digit
    code without hyphens, whose short segment cannot be known) is returned as written."""
    code = code.strip()
    parts = code.split("-")
    if len(parts) > 1:
        if not all(p.isdigit() for p in parts):
            return code
        widths = _NDC_SEGMENTS.get(tuple(len(p) for p in parts))
        return "".join(p.zfill(w) for p, w in zip(parts, widths)) if widths else code
    return code


def ndc_product(code: str) -> str | None:
    """The 9-digit product code (labeler + product) of a normalised 11-digit package NDC: every package
    of one product is the same drug, strength and dosage form (FDA NDC structure)."""
    return code[:9] if len(code) == 11 and code.isdigit() else None


@functools.lru_cache(maxsize=4096)
def canonical_coding(system: str, code: str) -> tuple[str, str]:
    """(system, code) as the value sets write them: a system OID or a trailing slash mapped to the FHIR
    URI, a SNOMED CT edition URI (http://snomed.info/sct/<module>) to SNOMED CT, and an ICD-10-CM code
    without its dot ("L03312") or in lower case written as ICD-10-CM writes it ("L03.312"), and an NDC
    with or without hyphens as one digit string (normalize_ndc)."""
    system = SYSTEM_ALIASES.get(system, system.rstrip("/") if system.endswith("/") else system)
    if system.startswith(SNOMED + "/"):
        system = SNOMED
    if system == ICD10CM:
        code = code.strip().upper()
        if "." not in code and len(code) > 3:
            code = code[:3] + "." + code[3:]
    elif system == NDC:
        code = normalize_ndc(code)
    return system, code


@dataclass
class ValueSetDef:
    """One ValueSet file, as read (includes not yet expanded)."""

    id: str
    url: str
    name: str
    title: str
    path: str
    codes: set[tuple[str, str]] = field(default_factory=set)
    excludes: set[tuple[str, str]] = field(default_factory=set)
    includes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    text_excludes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Membership:
    """Which value sets a thing belongs to, and which of those only by its text."""

    by_code: frozenset[str]
    by_text: frozenset[str]

    @property
    def all(self) -> frozenset[str]:
        return self.by_code | self.by_text

    @functools.cached_property
    def sorted_lists(self) -> tuple[list[str], list[str]]:
        """(all ids, text-only ids), sorted; computed once per membership (shared: do not mutate)."""
        return sorted(self.by_code | self.by_text), sorted(self.by_text)


EMPTY = Membership(frozenset(), frozenset())


class Terminology:
    """All value sets of a rules directory, expanded and indexed."""

    def __init__(self, defs: dict[str, ValueSetDef]):
        self.defs = defs
        self._alias: dict[str, str] = {}
        for d in defs.values():
            for alias in (d.id, d.url, d.name, Path(d.path).stem):
                if alias:
                    self._alias.setdefault(alias, d.id)
        self.errors: list[str] = []
        # (codings, texts) -> match; (codings, texts, cues) -> match_affirmed; (text, cues) -> affirmed
        # parts of the text, and of each of its clauses
        self._match_memo = Memo(lambda key: self._match([canonical_coding(s, c) for s, c in key[0]], key[1]))
        self._match_affirmed_memo = Memo(lambda key: self.match(
            key[0], [p for t in key[1] for p in self.affirmed(t, key[2])]))
        self._affirmed_memo = Memo(lambda key: self._affirmed(*key))
        self._clauses_memo = Memo(lambda key: tuple(
            p for clause in CLAUSES.split(key[0]) for p in self.affirmed(clause, key[1])))
        self.expanded: dict[str, tuple[set[tuple[str, str]], list[str]]] = {}
        for vid in defs:
            self.expanded[vid] = self._expand(vid, ())
        self._code_index: dict[tuple[str, str], set[str]] = {}
        text_index: dict[str, set[str]] = {}
        for vid, (codes, texts) in self.expanded.items():
            for sc in codes:
                if not (isinstance(sc[0], str) and isinstance(sc[1], str)):
                    continue
                sc = canonical_coding(*sc)
                self._code_index.setdefault(sc, set()).add(vid)
                if sc[0] == NDC and (product := ndc_product(sc[1])):
                    # a package NDC also stands for its product: a product code, or another package
                    # of the same product, is the same drug and strength
                    self._code_index.setdefault((NDC, product), set()).add(vid)
            for t in texts:
                text_index.setdefault(t.lower(), set()).add(vid)
        # Text patterns as word sequences: every n-gram of a text is looked up, so overlapping
        # patterns from different value sets ("pectoralis" and "pectoralis major") all match.
        self._text_index = {}
        for t, vids in text_index.items():
            words = tuple(_words(t))
            if words:
                self._text_index.setdefault(words, set()).update(vids)
        self._max_words = max((len(w) for w in self._text_index), default=0)
        # Excluded phrases, by the sets whose patterns they mask (an including set inherits its parts').
        self._exclude_index: dict[tuple[str, ...], set[str]] = {}
        for vid in defs:
            for t in self._excludes_of(vid, ()):
                words = tuple(_words(t))
                if words:
                    self._exclude_index.setdefault(words, set()).add(vid)
        self._max_exclude_words = max((len(w) for w in self._exclude_index), default=0)

    def resolve(self, name: str) -> str | None:
        """Value set id for an id, canonical url, name or file stem."""
        return self._alias.get(name)

    def _expand(self, vid: str, stack: tuple[str, ...]) -> tuple[set[tuple[str, str]], list[str]]:
        if vid in self.expanded:
            return self.expanded[vid]
        d = self.defs[vid]
        codes = set(d.codes)
        texts = list(d.texts)
        for inc in d.includes:
            target = self.resolve(inc)
            if target is None:
                self.errors.append(f"{d.path}:{_line_of(Path(d.path), 'valueSet')}: includes unknown value set {inc}")
                continue
            if target in stack + (vid,):
                self.errors.append(f"{d.path}:1: value set includes itself through {' -> '.join(stack + (vid, target))}")
                continue
            c, t = self._expand(target, stack + (vid,))
            codes |= c
            texts += t
        codes -= d.excludes
        return codes, texts

    def _excludes_of(self, vid: str, stack: tuple[str, ...]) -> list[str]:
        d = self.defs[vid]
        out = list(d.text_excludes)
        for inc in d.includes:
            target = self.resolve(inc)
            if target is not None and target not in stack + (vid,):
                out += self._excludes_of(target, stack + (vid,))
        return out

    def codes_of(self, vid: str) -> set[tuple[str, str]]:
        return self.expanded[vid][0]

    def match(self, codings: list[tuple[str, str]], texts: list[str]) -> Membership:
        """Membership of a thing described by (system, code) pairs and free texts (memoised)."""
        return self._match_memo[tuple(codings), tuple(texts)]

    def match_affirmed(self, codings: list[tuple[str, str]], texts: list[str], cues: Cues) -> Membership:
        """match() of the codings and of the parts of the texts no negation cue denies (`affirmed`): a
        concept a text negates is not matched by that text; a code always counts. One memoised look-up
        (a condition's code is read so on every evaluation: 0.55 us, where affirmed per text and then
        match took 1.3 us)."""
        return self._match_affirmed_memo[tuple(codings), tuple(texts), cues]

    def _match(self, codings, texts) -> Membership:
        by_code: set[str] = set()
        for sc in codings:
            hit = self._code_index.get(sc)
            if hit:
                by_code |= hit
            if sc[0] == NDC and (product := ndc_product(sc[1])):
                by_code |= self._code_index.get((NDC, product), set())
        by_text: set[str] = set()
        if self._max_words:
            index, longest = self._text_index, self._max_words
            for text in texts:
                words = _words(text) if text else []
                masked = self._masked(words)
                for i in range(len(words)):
                    for n in range(1, min(longest, len(words) - i) + 1):
                        hit = index.get(tuple(words[i : i + n]))
                        if hit:
                            if masked:
                                hit = {v for v in hit if not any(a <= i and i + n <= b for a, b, vs in masked if v in vs)}
                            by_text |= hit
        by_text -= by_code
        if not by_code and not by_text:
            return EMPTY
        return Membership(frozenset(by_code), frozenset(by_text))

    def _masked(self, words: list[str]) -> list[tuple[int, int, set[str]]]:
        """Spans (start, end, value sets) of the excluded phrases in words: those sets' patterns do not
        match inside them."""
        if not self._max_exclude_words:
            return []
        out = []
        for i in range(len(words)):
            for n in range(2, min(self._max_exclude_words, len(words) - i) + 1):
                vids = self._exclude_index.get(tuple(words[i : i + n]))
                if vids:
                    out.append((i, i + n, vids))
        return out

    def _concept_end(self, tok: _Tokens, j: int) -> int | None:
        """End (exclusive) of the longest value-set text pattern starting at word j, within its sentence."""
        end = None
        for n in range(1, min(self._max_words, len(tok.words) - j) + 1):
            if tok.sentence[j + n - 1] != tok.sentence[j]:
                break
            if tuple(tok.words[j : j + n]) in self._text_index:
                end = j + n
        return end

    def affirmed(self, text: str, cues: tuple[tuple[str, ...], ...]) -> list[str]:
        """The parts of a free text that are not denied by a negation cue (`compile_cues`), for text
        matching: `[text]` itself when nothing is denied.

        A cue denies the concept (a value-set text pattern) that starts right after it, with no
        punctuation between: "no cellulitis", "not pregnant", "denies pregnancy", "history of sepsis",
        "no history of sepsis". A cue that governs nothing after it - punctuation or the end of its
        sentence follows, perhaps after numbers - denies its clause before it, or the clause before when
        it starts its own: "sepsis ruled out", "cellulitis, resolved 2019", "steroid not given" ("not
        given" being a cue), "Pregnancy ruled out, no complications"; unless it is itself negated ("not
        resolved"). A cue that governs another word does not deny the concept before it: "Cellulitis of
        lower back, not improving", "Pregnancy at 24 weeks, no complications".
        Linear: each word is tried against each cue and each pattern length (both bounded).
        Memoised per (text, cues): a record's text is read again on every call for that patient."""
        return list(self._affirmed_memo[text, cues])

    def affirmed_clauses(self, text: str, cues: Cues) -> list[str]:
        """`affirmed` of each clause of a text (CLAUSES), in order: its parts no negation cue denies.
        Memoised per (text, cues) as one look-up: splitting and then a look-up per clause took 0.75 us for
        a Procedure's name (read so on every evaluation), one look-up 0.3 us."""
        return list(self._clauses_memo[text, cues])

    def _affirmed(self, text: str, cues: tuple[tuple[str, ...], ...]) -> list[str]:
        tok = _tokens(text)
        words, n = tok.words, len(tok.words)
        if not n or not cues:
            return [text] if n else []
        drop = [False] * n
        for i in range(n):
            for cue in cues:
                k = len(cue)
                if i + k > n or tuple(words[i : i + k]) != cue or tok.sentence[i + k - 1] != tok.sentence[i]:
                    continue
                j = i + k
                if j < n and tok.sentence[j] == tok.sentence[i] and not tok.gap[j]:
                    end = self._concept_end(tok, j)
                    if end is not None:
                        for x in range(i, end):
                            drop[x] = True
                rest = j
                while rest < n and tok.sentence[rest] == tok.sentence[i] and not tok.gap[rest] and words[rest].isdigit():
                    rest += 1
                governs_nothing = rest == n or tok.sentence[rest] != tok.sentence[i] or tok.gap[rest]
                if governs_nothing and not self._after_cue(tok, i, cues):
                    x = self._clause_start(tok, i)
                    if x == i and i > 0 and tok.sentence[i - 1] == tok.sentence[i]:
                        x = self._clause_start(tok, i - 1)   # "Cellulitis, resolved": the clause before
                    for y in range(x, j):
                        drop[y] = True
        if not any(drop):
            return [text]
        parts, run = [], []
        for w, dropped in zip(words, drop):
            if dropped:
                if run:
                    parts.append(" ".join(run))
                run = []
            else:
                run.append(w)
        if run:
            parts.append(" ".join(run))
        return parts

    @staticmethod
    def _clause_start(tok: _Tokens, i: int) -> int:
        """First word of the clause (between punctuation) that word i is in."""
        while i > 0 and not tok.gap[i] and tok.sentence[i - 1] == tok.sentence[i]:
            i -= 1
        return i

    @staticmethod
    def _after_cue(tok: _Tokens, i: int, cues) -> bool:
        """Word i follows a cue in its sentence ("not resolved", "not ruled out"): a negated cue."""
        for cue in cues:
            k = len(cue)
            if i - k >= 0 and tuple(tok.words[i - k : i]) == cue and tok.sentence[i - k] == tok.sentence[i]:
                return True
        return False

    def display_of(self, system: str, code: str) -> str | None:
        """The display a value set gives this code (e.g. an RxNorm product's full name with strengths), so a
        record that carries only the code can still be read like one that names it."""
        index = self.__dict__.get("_displays")
        if index is None:
            index = {}
            for d in self.defs.values():
                for s, c, display in getattr(d, "displays", ()):
                    if display and isinstance(s, str) and isinstance(c, str):
                        sc = canonical_coding(s, c)
                        index.setdefault(sc, display)
                        if sc[0] == NDC and (product := ndc_product(sc[1])):
                            index.setdefault((NDC, product), display)
            self._displays = index
        sc = canonical_coding(system, code)
        hit = index.get(sc)
        if hit is None and sc[0] == NDC and (product := ndc_product(sc[1])):
            hit = index.get((NDC, product))
        return hit

    def find_concept(self, text: str) -> tuple[str, str, str] | None:
        """A (system, code, display) whose display equals text (case-insensitive), from any value set."""
        want = text.strip().lower()
        for d in self.defs.values():
            for system, code, display in getattr(d, "displays", ()):
                if display.lower() == want:
                    return system, code, display
        return None


def _load_one(path: Path) -> tuple[ValueSetDef | None, list[str]]:
    errors: list[str] = []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", 0)
        return None, [f"{path}:{line}: not valid JSON: {getattr(e, 'msg', e)}"]
    if not isinstance(data, dict) or data.get("resourceType") != "ValueSet":
        return None, [f"{path}:1: not a FHIR ValueSet (resourceType must be ValueSet)"]
    from .fhir.validate import validate_resource

    for issue in validate_resource(data, "R4"):
        errors.append(f"{path}:{_line_of(path, issue.path)}: ValueSet {issue}")
    vid, url = data.get("id"), data.get("url")
    if not isinstance(vid, str) or not isinstance(url, str):
        errors.append(f"{path}:1: ValueSet needs an id and a canonical url")
        return None, errors
    d = ValueSetDef(vid, url, str(data.get("name") or ""), str(data.get("title") or data.get("name") or vid), str(path))
    displays: list[tuple[str, str, str]] = []
    compose = data.get("compose") or {}
    for inc in compose.get("include") or []:
        system = inc.get("system")
        for c in inc.get("concept") or []:
            d.codes.add((system, c.get("code")))
            displays.append((system, c.get("code"), c.get("display") or ""))
        d.includes += inc.get("valueSet") or []
    for exc in compose.get("exclude") or []:
        for c in exc.get("concept") or []:
            d.excludes.add((exc.get("system"), c.get("code")))
    for c in (data.get("expansion") or {}).get("contains") or []:
        d.codes.add((c.get("system"), c.get("code")))
        displays.append((c.get("system"), c.get("code"), c.get("display") or ""))
    for ext in data.get("extension") or []:
        if ext.get("url") == TEXT_MATCH_URL:
            value = ext.get("valueString")
            if not isinstance(value, str) or not value.strip():
                errors.append(f"{path}:{_line_of(path, 'extension')}: text-match extension needs a non-empty valueString")
            else:
                d.texts.append(value.strip())
        elif ext.get("url") == TEXT_EXCLUDE_URL:
            value = ext.get("valueString")
            if not isinstance(value, str) or len(_words(value)) < 2:
                errors.append(f"{path}:{_line_of(path, 'extension')}: text-exclude extension needs a phrase of two or more words")
            else:
                d.text_excludes.append(value.strip())
    d.displays = displays  # type: ignore[attr-defined]
    return d, errors


def _line_of(path: Path, element: str) -> int:
    """Best-effort line of the first occurrence of an element's last name in a JSON file."""
    key = element.split(".")[-1].split("[")[0]
    if not key:
        return 1
    try:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if f'"{key}"' in line:
                return n
    except OSError:
        pass
    return 1


def load_terminology(directory: Path, errors: list[str] | None = None) -> Terminology:
    """Load every *.json under directory (recursively). Collects errors into `errors` if given, else raises."""
    collected: list[str] = []
    defs: dict[str, ValueSetDef] = {}
    files = sorted(directory.rglob("*.json")) if directory.is_dir() else []
    if not files:
        collected.append(f"{directory}: no value set files found")
    for path in files:
        d, errs = _load_one(path)
        collected += errs
        if d is None:
            continue
        if d.id in defs:
            collected.append(f"{path}:1: value set id '{d.id}' is already used by {defs[d.id].path}")
            continue
        defs[d.id] = d
    term = Terminology(defs)
    collected += sorted(set(term.errors), key=term.errors.index)
    if errors is not None:
        errors += collected
        return term
    if collected:
        raise RuleError("; ".join(collected[:5]) + (f" (+{len(collected) - 5} more)" if len(collected) > 5 else ""))
    return term
