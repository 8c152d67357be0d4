"""The condition grammar's operators, one by one: each compiles itself to durable-rules, checks
itself, names the fields it reads, and evaluates itself in Python against a fact."""

from __future__ import annotations

import pytest

from cds_tpi.errors import RuleError
from cds_tpi.ruleset.conditions import (OPERATORS, All, Any_, CheckContext, Env, Eq, Exists, Gt, Gte, In, Lt, Lte, Mul,
                                        Ne, Or, Param, Ref, check_conditions, parse_value, parse_where)
from cds_tpi.ruleset.facttypes import FACT_FIELDS


class Terms:
    """A terminology with two value sets, found by name or id."""

    ids = {"anticoagulants": "vs-ac", "vs-ac": "vs-ac", "lidocaine": "vs-lido", "vs-lido": "vs-lido",
           "region-neck": "region-neck"}

    def resolve(self, name):
        return self.ids.get(name)


T = Terms()
PARAMS = {"max": 300, "per_kg": 4.5, "n": 4}
ENV = Env(PARAMS, T)


def one(where):
    (cond,) = parse_where(where)
    return cond


def ctx(fact="injectate", earlier=None, inside_or=False):
    return CheckContext(PARAMS, T, frozenset(FACT_FIELDS[fact]), earlier or {}, inside_or)


def messages(conds, **kw):
    return [str(i) for i in check_conditions(conds, ctx(**kw), ("where",))]


def test_the_registry_has_one_class_per_operator_of_the_schema():
    assert set(OPERATORS) == {"eq", "ne", "lt", "lte", "gt", "gte", "in", "any", "all", "none", "exists"}


@pytest.mark.parametrize("where,cls,term", [
    ({"status": "active"}, Eq, {"status": "active"}),
    ({"status": {"eq": "active"}}, Eq, {"status": "active"}),
    ({"status": {"ne": "stopped"}}, Ne, {"$neq": {"status": "stopped"}}),
    ({"dose_mg": {"lt": 5}}, Lt, {"$lt": {"dose_mg": 5}}),
    ({"dose_mg": {"lte": {"param": "max"}}}, Lte, {"$lte": {"dose_mg": 300}}),
    ({"dose_mg": {"gt": {"mul": [{"ref": "w.value"}, {"param": "per_kg"}]}}}, Gt,
     {"$gt": {"dose_mg": {"$mul": {"$l": {"w": "value"}, "$r": 4.5}}}}),
    ({"dose_mg": {"gte": {"mul": [{"param": "per_kg"}, {"ref": "w.value"}]}}}, Gte,  # the reference goes left
     {"$gte": {"dose_mg": {"$mul": {"$l": {"w": "value"}, "$r": 4.5}}}}),
    ({"dose_mg": {"gt": {"mul": [{"param": "per_kg"}, 2]}}}, Gt, {"$gt": {"dose_mg": 9.0}}),  # constants folded
    ({"status": {"in": ["a", "b"]}}, In, {"$or": [{"status": "a"}, {"status": "b"}]}),
    ({"status": {"in": ["a"]}}, In, {"status": "a"}),
    ({"vs": {"any": ["anticoagulants", "lidocaine"]}}, Any_, {"$iany": {"vs": {"$or": [{"$i": "vs-ac"}, {"$i": "vs-lido"}]}}}),
    ({"vs": {"all": ["anticoagulants", "lidocaine"]}}, All,
     {"$and": [{"$iany": {"vs": {"$i": "vs-ac"}}}, {"$iany": {"vs": {"$i": "vs-lido"}}}]}),
    ({"checked": {"all": ["medications"]}}, All, {"$iany": {"checked": {"$i": "medications"}}}),  # not a value set field
    ({"dose_mg": {"exists": True}}, Exists, {"$ex": {"dose_mg": 1}}),
    ({"dose_mg": {"exists": False}}, Exists, {"$nex": {"dose_mg": 1}}),
    ({"region": "region-neck"}, Eq, {"region": "region-neck"}),
    ({"or": [{"status": "a"}, {"status": "b", "dose_mg": {"gt": 1}}]}, Or,
     {"$or": [{"status": "a"}, {"$and": [{"status": "b"}, {"$gt": {"dose_mg": 1}}]}]}),
])
def test_compile(where, cls, term):
    cond = one(where)
    assert type(cond) is cls
    assert cond.compile(PARAMS, T) == term


def test_none_is_never_compiled_but_blocked_by_probes():
    cond = one({"vs": {"none": ["anticoagulants", "lidocaine"]}})
    with pytest.raises(RuleError):
        cond.compile(PARAMS, T)
    assert [b.compile(PARAMS, T) for b in cond.blocking()] == [{"$iany": {"vs": {"$i": "vs-ac"}}},
                                                                {"$iany": {"vs": {"$i": "vs-lido"}}}]
    assert one({"vs": {"any": ["lidocaine"]}}).blocking() == ()


def test_unknown_value_set_fails_compilation():
    with pytest.raises(RuleError, match="unknown value set 'nope'"):
        one({"vs": {"any": ["nope"]}}).compile(PARAMS, T)


@pytest.mark.parametrize("where,fact,expected", [
    ({"status": "active"}, {"status": "active"}, True),
    ({"status": "active"}, {"status": "stopped"}, False),
    ({"status": "active"}, {}, False),
    ({"dose_mg": 300}, {"dose_mg": 300.0}, True),                 # int and float are one number
    ({"status": {"ne": "stopped"}}, {"status": "active"}, True),
    ({"status": {"ne": "stopped"}}, {}, False),                    # a missing field fails ne too (as in durable)
    ({"status": {"ne": "stopped"}}, {"status": None}, False),
    ({"dose_mg": {"lt": 5}}, {"dose_mg": 4.9}, True),
    ({"dose_mg": {"lt": 5}}, {"dose_mg": 5}, False),
    ({"dose_mg": {"lte": 5}}, {"dose_mg": 5}, True),
    ({"dose_mg": {"gt": {"param": "max"}}}, {"dose_mg": 301}, True),
    ({"dose_mg": {"gt": {"param": "max"}}}, {"dose_mg": 300}, False),
    ({"dose_mg": {"gte": {"param": "max"}}}, {"dose_mg": 300}, True),
    ({"dose_mg": {"gt": 5}}, {"dose_mg": "9"}, False),             # no string/number mix
    ({"status": {"in": ["a", "b"]}}, {"status": "b"}, True),
    ({"status": {"in": ["a", "b"]}}, {"status": "c"}, False),
    ({"vs": {"any": ["anticoagulants", "lidocaine"]}}, {"vs": ["vs-lido"]}, True),
    ({"vs": {"any": ["anticoagulants"]}}, {"vs": ["vs-lido"]}, False),
    ({"vs": {"any": ["anticoagulants"]}}, {"vs": "vs-ac"}, False),  # list fields only
    ({"vs": {"all": ["anticoagulants", "lidocaine"]}}, {"vs": ["vs-lido", "vs-ac"]}, True),
    ({"vs": {"all": ["anticoagulants", "lidocaine"]}}, {"vs": ["vs-lido"]}, False),
    ({"vs": {"none": ["anticoagulants"]}}, {"vs": ["vs-lido"]}, True),
    ({"vs": {"none": ["anticoagulants"]}}, {"vs": ["vs-ac"]}, False),
    ({"vs": {"none": ["anticoagulants"]}}, {}, True),               # a missing list holds none
    ({"dose_mg": {"exists": True}}, {"dose_mg": None}, True),
    ({"dose_mg": {"exists": False}}, {}, True),
    ({"dose_mg": {"exists": False}}, {"dose_mg": 1}, False),
    ({"region": "region-neck"}, {"region": "region-neck"}, True),
    ({"or": [{"status": "a"}, {"dose_mg": {"gt": 1}}]}, {"status": "x", "dose_mg": 2}, True),
    ({"or": [{"status": "a"}, {"dose_mg": {"gt": 1}}]}, {"status": "x", "dose_mg": 0}, False),
])
def test_evaluate(where, fact, expected):
    assert one(where).evaluate(fact, ENV) is expected


def test_values_resolve_against_bindings():
    cond = one({"dose_mg": {"gt": {"mul": [{"ref": "w.value"}, {"param": "per_kg"}]}}})
    assert cond.evaluate({"dose_mg": 300}, ENV.bind("w", {"value": 60})) is True    # 300 > 270
    assert cond.evaluate({"dose_mg": 300}, ENV.bind("w", {"value": 70})) is False   # 300 > 315
    assert cond.evaluate({"dose_mg": 300}, ENV) is False                             # w not bound
    assert cond.describe(ENV.bind("w", {"value": 60})) == "dose_mg > w.value × param per_kg (= 270.0)"
    assert parse_value({"ref": "a.b"}) == Ref("a", "b")
    assert parse_value({"mul": [2, {"param": "n"}]}) == Mul(parse_value(2), Param("n"))


@pytest.mark.parametrize("where,fields", [
    ({"status": "a"}, {"status"}),
    ({"dose_mg": {"gt": {"mul": [{"ref": "w.value"}, 2]}}}, {"dose_mg", "value"}),
    ({"or": [{"status": "a"}, {"region": {"ref": "i.region"}, "vs": {"any": ["lidocaine"]}}]}, {"status", "region", "vs"}),
    ({"dose_mg": {"exists": False}}, {"dose_mg"}),
])
def test_fields(where, fields):
    assert set().union(*(c.fields() for c in parse_where(where))) == fields


def test_reads_say_which_list_values_a_condition_tests():
    """Membership tests (any/all/none) read only the ids they name; every other operator, and any
    field inside an `or` that another branch reads otherwise, reads the whole value."""
    def reads(where):
        return one(where).reads(T)

    assert reads({"vs": {"any": ["anticoagulants", "lidocaine"]}}) == {"vs": frozenset({"vs-ac", "vs-lido"})}
    assert reads({"vs": {"none": ["lidocaine"]}}) == {"vs": frozenset({"vs-lido"})}
    assert reads({"vs": {"exists": True}}) == {"vs": None}
    assert reads({"status": {"in": ["a", "b"]}}) == {"status": None}
    assert reads({"or": [{"vs": {"any": ["lidocaine"]}}, {"vs": {"all": ["anticoagulants"]}, "region": "unknown"}]}) == {
        "vs": frozenset({"vs-ac", "vs-lido"}), "region": None}
    assert reads({"or": [{"vs": {"any": ["lidocaine"]}}, {"vs": {"exists": False}}]}) == {"vs": None}
    cond = one({"dose_mg": {"gt": {"mul": [{"ref": "w.value"}, 2]}}})
    assert cond.reads(T) == {"dose_mg": None} and cond.refs() == {("w", "value")}
    assert one({"or": [{"region": {"ref": "s.region"}}, {"status": "a"}]}).refs() == {("s", "region")}


def test_shared_constraints_for_the_prefilter():
    assert one({"vs": {"any": ["lidocaine"]}}).shared() == ("vs", "non-empty")
    assert one({"status": "active"}).shared() == ("status", "active")
    assert one({"region": "region-neck"}).shared() is None       # a value set name, compiled to an id
    assert one({"dose_mg": {"gt": 1}}).shared() is None
    assert one({"vs": {"none": ["lidocaine"]}}).shared() is None


def test_check_each_operator():
    assert messages(parse_where({"vs": {"any": ["lidocaine", "nope"]}})) == ["unknown value set 'nope'"]
    assert messages(parse_where({"vs": {"none": ["nope"]}})) == ["unknown value set 'nope'"]
    assert messages(parse_where({"region": "nowhere"}), fact="site") == ["unknown value set 'nowhere'"]
    assert messages(parse_where({"region": "unknown"}), fact="site") == []
    assert messages(parse_where({"dose_mg": {"gt": {"param": "mx"}}})) == ["unknown param 'mx' (declare it under params)"]
    assert messages(parse_where({"dose_mg": {"ref": "w.value"}})) == [
        "ref 'w.value': no earlier (present) pattern 'w' in this alternative"]
    assert messages(parse_where({"dose_mg": {"ref": "w.colour"}}), earlier={"w": "observation"}) == [
        "ref 'w.colour': a observation fact has no field 'colour'"]
    assert messages(parse_where({"dose_mg": {"ref": "w.value"}}), earlier={"w": "observation"}) == []
    # only equality joins: durable-rules segfaults on a false gt/ne/... join (tests/test_oracle.py)
    for op in ("ne", "lt", "lte", "gt", "gte"):
        found = messages(parse_where({"dose_mg": {op: {"mul": [{"ref": "w.value"}, 2]}}}), earlier={"w": "observation"})
        assert len(found) == 1 and found[0].startswith(f"'{op}' against a ref: durable-rules crashes"), found
    assert messages(parse_where({"dose_mg": {"gt": {"mul": [{"param": "max"}, 2]}}})) == []
    unknown = messages(parse_where({"colour": {"eq": "red", "ne": "blue"}}))
    assert len(unknown) == 1 and unknown[0].startswith("unknown field 'colour'")
    assert messages(parse_where({"or": [{"vs": {"none": ["lidocaine"]}}, {"status": "a"}]}), fact="medication") == [
        "'none' cannot be used inside 'or' (it is compiled to a probe rule)"]


def test_check_issues_carry_the_json_path():
    (found,) = check_conditions(parse_where({"vs": {"any": ["lidocaine", "nope"]}}), ctx(), ("when", 0, "match", "d", "where"))
    assert found.location.pointer == ("when", 0, "match", "d", "where", "vs", "any", 1)
    assert found.severity == "error"
