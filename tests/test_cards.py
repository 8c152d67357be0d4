"""The cards stage (cds_tpi/cards.py) on hand-built findings: what a CDS Hooks 2.0 card carries, which
suggestions survive (only draft orders can be removed or annotated), empty values left out, order."""

from __future__ import annotations

import itertools
import os
import random
import uuid

import pytest
from jinja2.exceptions import SecurityError

from cds_tpi import cards, templates
from cds_tpi.findings import Finding
from cds_tpi.ruleset import load_rulebook

from .conftest import RULES


@pytest.fixture(scope="module")
def rules():
    return {r.id: r for r in load_rulebook(RULES).rules}


def _finding(rule, bindings, notes=("a note",), indicator=None):
    return Finding(rule, indicator or rule.indicator, bindings, tuple(notes), (0,))


def _fact(**fields):
    return {"fid": 1, "vs": [], "text_only": [], **fields}


WARFARIN = _fact(ref="MedicationStatement/w1", name="warfarin 5 mg tablet")
DRAFT = {"resourceType": "ServiceRequest", "id": "tpi1", "status": "draft", "intent": "order",
         "subject": {"reference": "Patient/p1"}, "note": [], "code": {"text": "Trigger point injection", "coding": []}}


def test_a_card_carries_summary_detail_source_topic_links_and_override_reasons(rules):
    card = cards.card_for(_finding(rules["anticoagulant"], {"drug": [WARFARIN]}), {})
    uuid.UUID(card["uuid"])
    assert card["indicator"] == "warning"
    assert "warfarin 5 mg tablet" in card["summary"] and len(card["summary"]) <= cards.SUMMARY_MAX
    assert "MedicationStatement/w1" in card["detail"] and "Sources: [" in card["detail"]
    assert card["source"]["topic"] == {"system": cards.TOPIC_SYSTEM, "code": "anticoagulant",
                                       "display": rules["anticoagulant"].title}
    assert card["source"]["url"] == rules["anticoagulant"].sources[0]["url"]
    assert [link["url"] for link in card["links"]] == [s["url"] for s in rules["anticoagulant"].sources]
    assert {r["system"] for r in card["overrideReasons"]} == {cards.OVERRIDE_SYSTEM}
    assert "suggestions" not in card and "selectionBehavior" not in card  # the rule offers none


def test_a_long_summary_is_cut_to_the_cds_hooks_limit(rules):
    long_name = _fact(ref="MedicationStatement/w2", name="warfarin " + "x" * 300)
    card = cards.card_for(_finding(rules["anticoagulant"], {"drug": [long_name]}), {})
    assert len(card["summary"]) == cards.SUMMARY_MAX and card["summary"].endswith("…")


def test_an_update_suggestion_annotates_the_draft_without_its_empty_values(rules):
    order = _fact(ref="ServiceRequest/tpi1", name="trigger point injection")
    allergy = _fact(ref="AllergyIntolerance/a1", name="latex allergy")
    card = cards.card_for(_finding(rules["latex-allergy"], {"allergy": [allergy], "order": [order]}),
                          {"ServiceRequest/tpi1": DRAFT})
    (suggestion,) = card["suggestions"]
    assert suggestion["isRecommended"] is True and card["selectionBehavior"] == "at-most-one"
    (action,) = suggestion["actions"]
    assert action["type"] == "update" and action["resource"]["id"] == "tpi1"
    assert action["resource"]["note"] == [{"text": "LATEX ALLERGY: use latex-free gloves and supplies."}]
    assert action["resource"]["code"] == {"text": "Trigger point injection"}  # "coding": [] left out
    assert DRAFT["note"] == []  # the request's draft itself is not changed


def test_a_suggestion_on_an_order_that_is_not_a_draft_of_the_request_is_dropped(rules):
    order = _fact(ref="ServiceRequest/not-in-request", name="trigger point injection")
    allergy = _fact(ref="AllergyIntolerance/a1", name="latex allergy")
    card = cards.card_for(_finding(rules["latex-allergy"], {"allergy": [allergy], "order": [order]}),
                          {"ServiceRequest/tpi1": DRAFT})
    assert "suggestions" not in card and "selectionBehavior" not in card


def test_a_suggestion_whose_required_pattern_is_unbound_is_left_out(rules):
    unplaced = _fact(ref="ServiceRequest/tpi1", name="left mid back", order="ServiceRequest/tpi1")
    card = cards.card_for(_finding(rules["thoracic-site"], {"unplaced": [unplaced]}), {"ServiceRequest/tpi1": DRAFT})
    assert card["summary"].startswith("Cannot tell whether injection site left mid back")
    assert "suggestions" not in card


def test_a_create_suggestion_leaves_out_what_is_unknown(rules):
    site = _fact(ref="ServiceRequest/tpi1", name="trapezius", order="ServiceRequest/tpi1")
    card = cards.card_for(_finding(rules["thoracic-site"], {"site": [site]}), {"ServiceRequest/tpi1": DRAFT})
    resource = card["suggestions"][0]["actions"][0]["resource"]
    assert resource["basedOn"] == [{"reference": "ServiceRequest/tpi1"}]
    assert "subject" not in resource  # no patient given: no empty reference is sent
    with_patient = cards.card_for(_finding(rules["thoracic-site"], {"site": [site]}), {"ServiceRequest/tpi1": DRAFT},
                                  patient={"ref": "Patient/p1", "name": "Pat"})
    assert with_patient["suggestions"][0]["actions"][0]["resource"]["subject"] == {"reference": "Patient/p1"}


def test_cards_are_sorted_most_severe_first_and_stable_within_a_severity(rules):
    info = _finding(rules["thoracic-site"], {"site": [_fact(ref="x", name="trapezius", order="x")]})
    warn1 = _finding(rules["anticoagulant"], {"drug": [WARFARIN]})
    warn2 = _finding(rules["anticoagulant"], {"drug": [_fact(ref="MedicationStatement/a", name="apixaban")]})
    crit = _finding(rules["anticoagulant"], {"drug": [WARFARIN]}, indicator="critical")
    out = cards.cards_for([info, warn1, crit, warn2], {})
    assert [c["indicator"] for c in out] == ["critical", "warning", "warning", "info"]
    assert "warfarin" in out[1]["summary"] and "apixaban" in out[2]["summary"]
    assert len({c["uuid"] for c in out}) == 4


def test_empty_values_are_left_out_but_nulls_inside_arrays_kept():
    assert cards._without_empty({"a": "", "b": [], "c": {}, "d": None, "e": {"f": ""}, "g": [None, 1, ""], "h": 0}) == \
        {"g": [None, 1], "h": 0}
    # a create action's resource: every string a template, rendered, then left out if it is empty
    spec = {"a": "{{ x }}", "b": ["{{ y }}", None, "z"], "c": {"d": "{{ y }}"}, "e": 1}
    assert cards._without_empty(spec, lambda s: s.replace("{{ x }}", "X").replace("{{ y }}", "")) == \
        {"a": "X", "b": [None, "z"], "e": 1}


def test_a_missing_data_headline_is_cut_at_the_first_colon_outside_parentheses():
    from cds_tpi.templates import headline

    assert headline("allergies (none recorded): checks not done") == "allergies (none recorded)"
    assert headline("dose of lidocaine (no usable dose in mg: 1 vial): not done") == \
        "dose of lidocaine (no usable dose in mg: 1 vial)"
    assert headline("a (b: c") == "a (b)"  # never an unclosed parenthesis


def test_a_replace_suggestion_whose_delete_cannot_be_built_is_not_offered(rules):
    """"Replace lidocaine with saline" = delete the lidocaine draft + create saline. When the lidocaine draft
    has no id (sent with a urn:uuid fullUrl only), the delete cannot be built: offering the create alone
    would add saline and leave the lidocaine of an allergic patient (audit 4). The whole suggestion goes."""
    allergy = _fact(ref="AllergyIntolerance/a1", name="lidocaine allergy", vs=["lidocaine", "local-anesthetics-amide"])
    lido = _fact(ref="", name="lidocaine 1% injection", vs=["lidocaine", "local-anesthetics-amide", "local-anesthetics"])
    card = cards.card_for(_finding(rules["allergy-anesthetic"], {"allergy": [allergy], "drug": [lido]}), {})
    assert "suggestions" not in card
    drafted = dict(lido, ref="MedicationRequest/lido-1")
    lido_draft = {"resourceType": "MedicationRequest", "id": "lido-1", "status": "draft", "intent": "order"}
    card = cards.card_for(_finding(rules["allergy-anesthetic"], {"allergy": [allergy], "drug": [drafted]}),
                          {"MedicationRequest/lido-1": lido_draft})
    replace = card["suggestions"][0]
    assert [a["type"] for a in replace["actions"]] == ["delete", "create"]
    assert replace["actions"][0]["resourceId"] == "MedicationRequest/lido-1"


def test_a_steroid_removal_does_not_delete_a_compounded_request_that_holds_the_anesthetic(rules):
    """One MedicationRequest 'TRIAMCINOLONE 40 MG IN LIDOCAINE 1% 5 ML' (audit 4 w28): deleting it would
    remove the lidocaine too, so the 'Remove' suggestion is not offered; a note on the draft is."""
    compounded = _fact(ref="MedicationRequest/mix", name="TRIAMCINOLONE 40 MG IN LIDOCAINE 1% 5 ML",
                       vs=["corticosteroids", "lidocaine", "local-anesthetics", "local-anesthetics-amide"])
    draft = {"resourceType": "MedicationRequest", "id": "mix", "status": "draft", "intent": "order"}
    diabetes = _fact(ref="Condition/dm", name="Type 2 diabetes", vs=["diabetes"])
    for rid in ("diabetes-steroid", "pregnancy-steroid", "steroid-frequency", "allergy-steroid"):
        card = cards.card_for(_finding(rules[rid], {"steroid": [compounded], "diabetes": [diabetes]}),
                              {"MedicationRequest/mix": draft})
        actions = [a for s in card.get("suggestions", []) for a in s["actions"]]
        assert actions and all(a["type"] == "update" for a in actions), rid
        assert "without the corticosteroid" in actions[0]["resource"]["note"][-1]["text"]
    # a steroid request of its own is deleted as before, and no note is offered
    alone = _fact(ref="MedicationRequest/k", name="Kenalog-40", vs=["corticosteroids"])
    card = cards.card_for(_finding(rules["diabetes-steroid"], {"steroid": [alone], "diabetes": [diabetes]}),
                          {"MedicationRequest/k": dict(draft, id="k")})
    assert [[a["type"] for a in s["actions"]] for s in card["suggestions"]] == [["delete"]]


def test_an_anesthetic_removal_does_not_delete_a_compounded_request_that_holds_the_steroid(rules):
    allergy = _fact(ref="AllergyIntolerance/a1", name="lidocaine allergy", vs=["lidocaine", "local-anesthetics-amide"])
    compounded = _fact(ref="MedicationRequest/mix", name="TRIAMCINOLONE 40 MG IN LIDOCAINE 1% 5 ML",
                       vs=["corticosteroids", "lidocaine", "local-anesthetics", "local-anesthetics-amide"])
    draft = {"resourceType": "MedicationRequest", "id": "mix", "status": "draft", "intent": "order"}
    card = cards.card_for(_finding(rules["allergy-anesthetic"], {"allergy": [allergy], "drug": [compounded]}),
                          {"MedicationRequest/mix": draft})
    assert [[a["type"] for a in s["actions"]] for s in card["suggestions"]] == [["update"]]


def test_card_ids_are_random_rfc4122_version_4_uuids():
    for _ in range(200):
        raw = os.urandom(16)
        assert cards._uuid4_text(raw) == str(uuid.UUID(bytes=raw, version=4))
    ids = list(itertools.islice(cards.random_uuids(batch=3), 50))
    assert len(set(ids)) == 50 and all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_a_local_policy_that_reads_only_params_is_rendered_once_per_rule_and_says_the_same(rules):
    rule = rules["diabetes-steroid"]
    assert rule.card_parts.policy == templates.render(rule.policy, cards._context(_finding(rule, {}), None))
    card = cards.card_for(_finding(rule, {"steroid": [_fact(ref="MedicationRequest/s", name="triamcinolone")]}), {})
    assert f"_Local policy:_ {rule.card_parts.policy}\n\n" in card["detail"]


def _escaped_the_long_way(value, kind):
    """Every escaping step applied, as templates.py did before its no-special-character shortcuts."""
    text = templates._SPACES.sub(" ", templates._INVISIBLE.sub(" ", "" if value is None else str(value)))
    text = text if len(text) <= templates.VALUE_MAX else text[: templates.VALUE_MAX - 1].rstrip() + "…"
    if kind == "text":
        if "\\" in text or "&" in text:
            text = templates._ESCAPED.sub(r"\1", text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        return text
    text = templates._BAD_SCHEME.sub("(link removed) ", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = templates._MD_PUNCT.sub(r"\\\1", text)
    return templates._MD_LINE_START.sub(templates._escape_marker, text, count=1)


def test_the_escaping_shortcuts_change_nothing():
    """markdown_escape and plain_text skip the steps a value has no character for: the same text as
    every step applied, on random strings of the characters the steps act on."""
    pieces = list("ab Z09:/.)(#+-=&<>\\`*_~[]|{}\t\n\x00\x7f\u00a0\u200b\u2028\u202e\ufeff") + \
        ["javascript:", "DATA:text/", "1.", "- ", "# ", "  ", "&amp;", "\\*", "x" * 150]
    rnd = random.Random(8)
    for _ in range(5000):
        s = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        assert templates.markdown_escape(s) == _escaped_the_long_way(s, "markdown"), s
        assert templates.plain_text(s) == _escaped_the_long_way(s, "text"), s
    for value in (None, 30, 7.1, -5, True):
        assert templates.markdown_escape(value) == _escaped_the_long_way(value, "markdown")


def test_a_template_reads_jinja_globals_and_the_dict_methods_the_sandbox_allows():
    """Only the globals a template reads are merged into its context, and `fact.key` of a dict is read
    before the sandbox is asked: both must leave what a template can do unchanged."""
    ctx = {"xs": [{"name": "a", "items": "x"}], "params": {"n": 2}}
    assert templates.render("{% for i in range(params.n) %}{{ i }}{% endfor %}", ctx) == "01"
    assert templates.render("{% set ns = namespace(k=xs[0].name) %}{{ ns.k }}", ctx) == "a"
    assert templates.render("{{ xs[0].items()|list|length }} {{ xs[0]['items'] }}", ctx) == "2 x"
    with pytest.raises(SecurityError):
        templates.render("{{ xs[0].__class__.__mro__ }}", ctx)


def test_loop_properties_are_read_as_before_and_the_rest_of_loop_still_goes_through_the_sandbox():
    """`loop.last` & co. are read without the sandbox's checks (numbers and booleans of Jinja's own
    LoopContext); everything else of `loop` is still the sandbox's."""
    ctx = {"xs": ["a", "b", "c"]}
    source = ("{% for x in xs %}{{ x }}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
              "{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.depth }}{{ loop.depth0 }}"
              "{{ loop.cycle('o', 'e') }}{% if not loop.last %}; {% endif %}{% endfor %}")
    assert templates.render(source, ctx) == (
        "a1032TrueFalse310o; b2121FalseFalse310e; c3210FalseTrue310o")
    with pytest.raises(SecurityError):
        templates.render("{% for x in xs %}{{ loop.__class__.__mro__ }}{% endfor %}", ctx)
    with pytest.raises(SecurityError):
        templates.render("{% for x in xs %}{{ loop._iterable }}{% endfor %}", ctx)


def test_memoised_escaping_gives_what_escaping_gives():
    """markdown_escape and plain_text keep their result for a short str: asked again, and for a long
    value or a value that is no plain str, they give what every step applied gives."""
    for value in ("a*b", "a*b", "# x", "x" * (templates.VALUE_MAX + 1), "y" * 5000, templates.MarkdownSafe("\\*"), 7, None):
        for _ in range(2):
            if not isinstance(value, templates.MarkdownSafe):
                assert templates.markdown_escape(value) == _escaped_the_long_way(value, "markdown")
            assert templates.plain_text(value) == _escaped_the_long_way(value, "text")
    assert templates.markdown_escape(templates.MarkdownSafe("\\*")) == "\\*"

