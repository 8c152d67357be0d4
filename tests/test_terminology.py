"""Terminology stage (cds_tpi/terminology.py): text patterns and text-exclude phrases, on small value sets
written here (the shipped sets are covered by test_site_vocabulary.py and test_terminology_coverage.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_tpi.errors import RuleError
from cds_tpi.terminology import TEXT_EXCLUDE_URL, TEXT_MATCH_URL, load_terminology


def _vs(vid: str, texts=(), excludes=(), includes=()) -> dict:
    d = {
        "resourceType": "ValueSet", "id": vid, "url": f"https://example.org/ValueSet/{vid}", "status": "active",
        "extension": [{"url": TEXT_MATCH_URL, "valueString": t} for t in texts]
        + [{"url": TEXT_EXCLUDE_URL, "valueString": t} for t in excludes],
    }
    if includes:
        d["compose"] = {"include": [{"valueSet": [f"https://example.org/ValueSet/{i}" for i in includes]}]}
    if not d["extension"]:
        del d["extension"]
    return d


def _term(tmp_path: Path, *sets: dict):
    for d in sets:
        (tmp_path / f"{d['id']}.json").write_text(json.dumps(d))
    return load_terminology(tmp_path)


def test_an_excluded_phrase_masks_only_its_own_sets_patterns(tmp_path):
    term = _term(tmp_path,
                 _vs("shoulder", texts=["teres"], excludes=["pronator teres"]),
                 _vs("forearm", texts=["pronator teres", "forearm"]),
                 _vs("any-teres", texts=["teres"]))
    got = term.match([], ["R pronator teres"]).all
    assert got == {"forearm", "any-teres"}
    assert term.match([], ["teres major, right"]).all == {"shoulder", "any-teres"}
    # the phrase masks only the words it covers: another mention in the same text still matches
    assert "shoulder" in term.match([], ["pronator teres and teres major"]).all


def test_a_longer_pattern_of_the_same_set_is_not_masked(tmp_path):
    term = _term(tmp_path, _vs("back", texts=["back", "back of trunk"], excludes=["back of"]))
    assert term.match([], ["Cellulitis, back of left hand"]).all == frozenset()
    assert term.match([], ["back of trunk"]).all == {"back"}
    assert term.match([], ["lower back"]).all == {"back"}


def test_an_including_set_inherits_the_excluded_phrases(tmp_path):
    term = _term(tmp_path,
                 _vs("part", texts=["back"], excludes=["back of"]),
                 _vs("whole", includes=["part"]))
    assert term.expanded["whole"][1] == ["back"]
    assert term.match([], ["back of knee"]).all == frozenset()
    assert term.match([], ["back"]).all == {"part", "whole"}


@pytest.mark.parametrize("phrase", ["teres", "", "  "])
def test_an_excluded_phrase_must_have_two_words(tmp_path, phrase):
    (tmp_path / "bad.json").write_text(json.dumps(_vs("bad", texts=["teres"], excludes=[phrase])))
    with pytest.raises(RuleError, match="text-exclude extension needs a phrase of two or more words"):
        load_terminology(tmp_path)


# -- NDC (http://hl7.org/fhir/sid/ndc): the same product is sent 10-digit hyphenated and 11-digit ------
from cds_tpi.terminology import NDC, canonical_coding, ndc_product, normalize_ndc  # noqa: E402


@pytest.mark.parametrize("written,want", [
    ("0003-0293-05", "00003029305"),     # 4-4-2 (label form)
    ("00003-0293-05", "00003029305"),    # 5-4-2 hyphenated
    ("00003029305", "00003029305"),      # 11 digits, no hyphens
    (" 00003029305 ", "00003029305"),
    ("50458-580-30", "50458058030"),     # 5-3-2
    ("70121-1573-1", "70121157301"),     # 5-4-1
    ("0003-0293", "000030293"),          # product code 4-4
    ("50458-580", "504580580"),          # product code 5-3
    ("000030293", "000030293"),          # product code, 9 digits
    ("0003029305", "0003029305"),        # 10 digits without hyphens: its short segment is unknown, kept
    ("0003-02A3-05", "0003-02A3-05"),    # not digits: kept
    ("123-4567-89", "123-4567-89"),      # no NDC segment layout: kept
])
def test_normalize_ndc(written, want):
    assert normalize_ndc(written) == want


def test_canonical_coding_normalises_ndc_only_for_the_ndc_system():
    assert canonical_coding(NDC, "0003-0293-05") == (NDC, "00003029305")
    assert canonical_coding(NDC + "/", "0003-0293-05") == (NDC, "00003029305")
    assert canonical_coding("http://example.org/local", "0003-0293-05") == ("http://example.org/local", "0003-0293-05")


def test_ndc_product():
    assert ndc_product("00003029305") == "000030293"
    assert ndc_product("000030293") is None and ndc_product("0003-0293-05") is None


def test_ndc_value_set_matches_every_form_package_and_product(tmp_path):
    d = _vs("steroid")
    d["compose"] = {"include": [{"system": NDC, "concept": [
        {"code": "0003-0293-05", "display": "Kenalog-40 (triamcinolone acetonide 40 mg/mL)"},
        {"code": "50458-580", "display": "Xarelto (rivaroxaban 10 mg)"}]}]}
    term = _term(tmp_path, d)
    for code in ("0003-0293-05", "00003-0293-05", "00003029305",   # the package, each way it is sent
                 "0003-0293", "000030293",                         # its product
                 "0003-0293-20",                                   # another package of that product
                 "50458-580", "50458-0580", "50458-580-30", "50458058030"):
        assert term.match([(NDC, code)], []).by_code == {"steroid"}, code
    for code in ("0003-0294-05", "00003029405", "0003029305", "0003-0293-5X"):
        assert term.match([(NDC, code)], []).all == frozenset(), code
    assert term.display_of(NDC, "00003029305") == "Kenalog-40 (triamcinolone acetonide 40 mg/mL)"
    assert term.display_of(NDC, "0003-0293-28") == "Kenalog-40 (triamcinolone acetonide 40 mg/mL)"
    assert term.display_of(NDC, "50458058030") == "Xarelto (rivaroxaban 10 mg)"
