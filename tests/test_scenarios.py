"""Every file in fhir_samples/ gives exactly its expected cards (rule id and indicator). Inputs that
must be refused (records of another patient) live in tests/refused_samples/, whose sidecars say
`error: <text>`: evaluating them raises an input error containing that text, and gives no cards
(they are not in fhir_samples/, so that `cds-tpi evaluate fhir_samples/` stays a clean demo)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from cds_tpi.fhir.read import read_bytes
from cds_tpi.pipeline import InputError

from .cdshooks import assert_cds_response
from .conftest import RULES, SAMPLES

SAMPLE_FILES = sorted(p for p in SAMPLES.glob("*") if p.suffix in (".json", ".ndjson"))
REFUSED_FILES = sorted(p for p in (Path(__file__).parent / "refused_samples").glob("*") if p.suffix in (".json", ".ndjson"))


def _sidecar(path):
    return path.with_name(path.name.rsplit(".", 1)[0] + ".expected.yaml")


def test_samples_exist():
    assert len(SAMPLE_FILES) >= 28, "at least one positive and one negative sample per rule"


@pytest.mark.parametrize("path", SAMPLE_FILES + REFUSED_FILES, ids=[p.name for p in SAMPLE_FILES + REFUSED_FILES])
def test_sample_gives_expected_cards(path, evaluator):
    side = _sidecar(path)
    assert side.exists(), f"{path.name} has no sidecar {side.name}"
    expected = yaml.safe_load(side.read_text())
    now = expected.get("now")
    now = datetime(now.year, now.month, now.day, tzinfo=timezone.utc)
    assert bool(expected.get("error")) == (path in REFUSED_FILES), f"{side.name}: 'error:' only in tests/refused_samples/"
    if expected.get("error"):
        assert expected["cards"] == [], f"{side.name}: an input that is refused has no cards"
        with pytest.raises(InputError) as refused:
            evaluator.evaluate_document(read_bytes(path.read_bytes(), path.name), now=now)
        assert expected["error"] in str(refused.value), f"{path.name}: {expected.get('description', '')}"
        return
    result = evaluator.evaluate_document(read_bytes(path.read_bytes(), path.name), now=now)
    assert_cds_response(result.response)
    got = sorted((c["source"]["topic"]["code"], c["indicator"]) for c in result.cards)
    want = sorted((c["rule"], c["indicator"]) for c in expected["cards"])
    assert got == want, f"{path.name}: {expected.get('description', '')}"
    for c in expected["cards"]:
        _assert_mentions(path, c, [card for card in result.cards
                                   if (card["source"]["topic"]["code"], card["indicator"]) == (c["rule"], c["indicator"])])


def _assert_mentions(path, want: dict, cards: list[dict]) -> None:
    """A sidecar card may say what the card must tell the clinician: `summary_has` (text in its
    summary), `mentions` (text in its summary or detail: the drug, the dose in mg, the record and its
    date, what was not checked) and `not_mentions` (text it must not carry). Matched ignoring case and
    markdown emphasis, against the card(s) of that rule and indicator."""
    def flat(text: str) -> str:
        return " ".join(text.replace("**", "").replace("_", " ").split()).lower()

    for key in ("summary_has", "mentions", "not_mentions"):
        for text in want.get(key) or ():
            needle = flat(str(text))
            hits = [c for c in cards if needle in flat(c["summary"] if key == "summary_has" else
                                                      c["summary"] + " " + c.get("detail", ""))]
            if key == "not_mentions":
                assert not hits, f"{path.name}: the {want['rule']} card must not say {text!r}: {hits[0]['summary']}"
            else:
                assert hits, (f"{path.name}: the {want['rule']} card does not say {text!r}:\n"
                              + "\n".join(c["summary"] + "\n" + c.get("detail", "") for c in cards))


def test_every_rule_has_a_positive_and_a_negative_sample():
    rule_ids = {p.stem for p in RULES.glob("*.yaml") if p.name != "records.yaml"}
    fired: dict[str, int] = {r: 0 for r in rule_ids}
    for path in SAMPLE_FILES:
        expected = yaml.safe_load(_sidecar(path).read_text())
        for c in expected["cards"]:
            fired[c["rule"]] += 1
    missing = sorted(r for r, n in fired.items() if n == 0)
    assert not missing, f"rules no sample expects: {missing}"
    # A negative for rule X: a sample named X-… that expects no X card, or one whose sidecar says negative_for: [X].
    for rule in rule_ids - {"missing-data"}:
        negatives = []
        for p in SAMPLE_FILES:
            side = yaml.safe_load(_sidecar(p).read_text())
            expects = {c["rule"] for c in side["cards"]}
            if rule not in expects and (p.name.startswith(rule + "-") or rule in side.get("negative_for", [])):
                negatives.append(p)
        assert negatives, f"no negative sample for {rule} (name it '{rule}-negative-….json')"


def _hook_requests():
    import orjson
    out = []
    for p in SAMPLE_FILES:
        if p.suffix != ".json":
            continue
        try:
            body = orjson.loads(p.read_bytes())
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict) and body.get("hook") in ("order-select", "order-sign", "appointment-book"):
            out.append(p)
    return out


@pytest.mark.parametrize("path", _hook_requests(), ids=[p.name for p in _hook_requests()])
def test_the_service_gate_evaluates_every_hook_sample_that_expects_cards(path, evaluator):
    """The CLI always evaluates a CDS Hooks request; the service first asks its gate (is the order a TPI,
    or may it be one?) and answers no cards when it says no. A sample whose expected cards are not empty
    must pass the gate, or the service would be silent where the CLI is not (audit 3: the two front doors
    disagreed for an injectate ordered alone)."""
    import orjson
    from cds_tpi.service.discovery import SERVICES
    from cds_tpi.service.hooks import HookCall, should_evaluate
    expected = yaml.safe_load(_sidecar(path).read_text())
    body = orjson.loads(path.read_bytes())
    service = next(s for s in SERVICES.values() if s.hook == body["hook"])
    call = HookCall(service, body, "x", str(body.get("context", {}).get("patientId", "")), None, None)
    if expected["cards"]:
        assert should_evaluate(call, evaluator), (
            f"{path.name}: expects {[c['rule'] for c in expected['cards']]} but the service gate would answer no cards")
