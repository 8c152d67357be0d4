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
