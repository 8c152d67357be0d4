"""`cds-tpi evaluate --format html` (issue 9 item 10): a self-contained page, rendered by a real
browser (headless Chromium from Debian's `chromium` package), checked through its DOM and a
screenshot. Without chromium the browser tests skip, except under CI=true where they fail: CI
(.ci/run) installs it."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_tpi.cli import cli
from cds_tpi.report import INDICATOR_COLOURS

from .conftest import SAMPLES

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=1">**bold** [x](javascript:alert(1))'
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01"}
WARFARIN_HOSTILE = {
    "resourceType": "MedicationStatement", "id": "ms-hostile", "status": "active", "subject": {"reference": "Patient/p1"},
    "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "855332",
                                              "display": "warfarin sodium 5 MG Oral Tablet"}],
                                  "text": "Warfarin " + HOSTILE}}
INPUTS = [SAMPLES / "bleeding-disorder-inr-high.json", SAMPLES / "missing-data-no-allergy-list.json",
          SAMPLES / "thoracic-site-rhomboid.json", SAMPLES / "clean-patient.json"]


def chromium() -> str:
    """Path of the chromium binary; skip (locally) or fail (CI=true) when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is not installed, and CI must run the HTML report test (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install -y chromium): HTML report not rendered in a browser")


def _browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    hostile = tmp / "hostile <b>name<b> &amp;.json"
    hostile.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                   "entry": [{"resource": PATIENT}, {"resource": WARFARIN_HOSTILE}]}))
    broken = tmp / "broken.json"
    broken.write_text('{"resourceType": "Bundle",')
    r = CliRunner().invoke(cli, ["evaluate", "--format", "html", "--now", "2026-11-24",
                                 *map(str, INPUTS), str(hostile), str(broken)], catch_exceptions=False)
    assert r.exit_code == 1, r.output  # the broken input
    assert r.stdout.startswith("<!DOCTYPE html>")
    page = tmp / "report.html"
    page.write_text(r.stdout, encoding="utf-8")
    return page


class _Dom(HTMLParser):
    """Elements of the browser's serialised DOM: tags, attributes, and text per card."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cards: list[dict] = []
        self.sections: list[dict] = []
        self.title = ""
        self._in_title = False
        self._depth_card = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self._depth += 1
        if tag == "title":
            self._in_title = True
        if tag == "section":
            self.sections.append({"input": a.get("data-input"), "text": ""})
        if tag == "article":
            self.cards.append({"indicator": a.get("data-indicator"), "rule": a.get("data-rule"),
                               "style": a.get("style", ""), "text": ""})
            self._depth_card = self._depth

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "article":
            self._depth_card = None
        self._depth -= 1

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self.sections:
            self.sections[-1]["text"] += data
        if self._depth_card is not None and self.cards:
            self.cards[-1]["text"] += data


def test_report_is_self_contained_and_escapes_record_text(report):
    text = report.read_text()
    assert "http-equiv=\"Content-Security-Policy\"" in text and "default-src 'none'" in text
    for external in ('src="http', "src='http", 'rel="stylesheet"', "@import", "<script"):
        assert external not in text
    assert "&lt;script&gt;" in text and "<img" not in text
    assert 'href="javascript' not in text.lower()


def test_report_rendered_by_chromium_dom(report, tmp_path):
    binary = chromium()
    done = _browser(binary, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    assert "pwned" not in dom.title and dom.title.startswith("cds-tpi report: 6 input(s)")
    assert [t for t, _ in dom.tags if t in ("script", "img", "iframe")] == []
    assert all(not a.get("href", "").lower().startswith("javascript") for _, a in dom.tags)
    # one section per input, failed ones included, names escaped
    assert [s["input"] for s in dom.sections] == [*map(str, INPUTS), str(report.parent / "hostile <b>name<b> &amp;.json"),
                                                  str(report.parent / "broken.json")]
    assert "Not evaluated: not valid JSON" in dom.sections[-1]["text"]
    assert "No cards" in dom.sections[3]["text"]  # the clean patient
    by_rule = {c["rule"]: c for c in dom.cards}
    # indicator colour, summary, rendered markdown, suggestions, links and source
    assert by_rule["bleeding-disorder"]["indicator"] == "critical"
    assert INDICATOR_COLOURS["critical"] in by_rule["bleeding-disorder"]["style"]
    assert "INR" in by_rule["bleeding-disorder"]["text"]
    assert "Suggestion: Add ultrasound guidance" in by_rule["thoracic-site"]["text"]
    assert "Source: cds-tpi trigger point injection safety check" in by_rule["thoracic-site"]["text"]
    assert "**" not in by_rule["thoracic-site"]["text"]  # markdown was rendered, not shown raw
    strong = [a for t, a in dom.tags if t == "strong"]
    assert strong
    links = [a["href"] for t, a in dom.tags if t == "a" and "href" in a]
    assert links and all(h.startswith("https://") for h in links)
    # the missing-data reasons
    assert any(c["rule"] == "missing-data" and "allergy checks were not done" in c["text"] for c in dom.cards)
    # record text shown as text, not markup
    hostile = next(c for c in dom.cards if c["rule"] == "anticoagulant" and "Warfarin" in c["text"]
                   and "<script>" in c["text"])
    assert '<img src=x onerror="document.title=1">' in hostile["text"]


def _png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw rows) of an 8-bit RGB/RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour in (2, 6) and interlace == 0
            bpp = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray(stride * height)
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif f == 4:
                c = prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, bpp, bytes(out)


def test_report_screenshot_shows_indicator_colours(report, tmp_path):
    binary = chromium()
    shot = tmp_path / "report.png"
    done = _browser(binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=900,700",
                    "--hide-scrollbars", report.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    width, height, bpp, pixels = _png_pixels(shot.read_bytes())
    assert (width, height) == (900, 700)
    colours = {}
    for i in range(0, len(pixels), bpp * 3):  # every third pixel is plenty for 8-px borders
        colours[pixels[i:i + 3]] = colours.get(pixels[i:i + 3], 0) + 1
    # the first input has a critical card: its red border and badge are painted; the page is not blank
    red = bytes.fromhex(INDICATOR_COLOURS["critical"][1:])
    assert colours.get(red, 0) > 500, sorted(colours.items(), key=lambda kv: -kv[1])[:5]
    assert len(colours) > 50


def test_missing_chromium_skips_locally_but_fails_under_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the HTML report test"):
        chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        chromium()
