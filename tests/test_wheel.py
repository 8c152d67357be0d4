"""The built wheel (issue 9 item 5): it carries every rule, value set and schema the source tree has,
nothing of the tests or samples, no setuptools deprecation warning at build time, and the CLI run
from the unpacked wheel (not the checkout) loads its bundled rules and evaluates a sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    # build isolation: the build backend pyproject.toml asks for (setuptools>=77) from the package index
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=540)
    if r.returncode != 0:
        message = f"pip wheel failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)  # e.g. no package index on this machine
    wheels = list(out.glob("cds_tpi-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], r.stdout + r.stderr


def _relative(directory: Path, pattern: str) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.glob(pattern)}


def test_the_wheel_carries_every_rule_value_set_and_schema(wheel):
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    rules = ROOT / "rules"
    for pattern in ("*.yaml", "*.md", "valuesets/*.json", "valuesets/*.md", "valuesets/vsac/*.json"):
        want = {f"cds_tpi_rules/{p}" for p in _relative(rules, pattern)}
        assert want and want <= names, sorted(want - names)
    package = ROOT / "cds_tpi"
    for pattern in ("**/*.py", "**/*.json"):
        want = {f"cds_tpi/{p}" for p in _relative(package, pattern) if "__pycache__" not in p}
        assert want and want <= names, sorted(want - names)
    assert not {n for n in names if n.startswith(("tests/", "fhir_samples/", "benchmarks/", "docs/"))}
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(path).read(metadata).decode()
    assert "Requires-Python: <3.13,>=3.11" in text or "Requires-Python: >=3.11,<3.13" in text
    assert "Provides-Extra: service" in text and "Provides-Extra: postgres" in text
    entry_points = zipfile.ZipFile(path).read(metadata.replace("METADATA", "entry_points.txt")).decode()
    assert "cds-tpi = cds_tpi.cli:main" in entry_points


def test_building_the_wheel_gives_no_setuptools_deprecation_warning(wheel):
    _, log = wheel
    assert "SetuptoolsDeprecationWarning" not in log and "deprecated" not in log.lower(), log[-3000:]


def test_the_cli_of_the_unpacked_wheel_uses_its_bundled_rules(wheel, tmp_path):
    path, _ = wheel
    unpacked = tmp_path / "site"
    zipfile.ZipFile(path).extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    code = ("import json, sys; from cds_tpi.ruleset.load import default_rules_dir; "
            "import cds_tpi; print(json.dumps([str(default_rules_dir()), cds_tpi.__file__]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rules_dir, package_file = json.loads(r.stdout)
    assert rules_dir == str(unpacked / "cds_tpi_rules") and package_file.startswith(str(unpacked)), r.stdout
    sample = ROOT / "fhir_samples" / "anticoagulant-warfarin.json"
    r = subprocess.run([sys.executable, "-c", "from cds_tpi.cli import main; main()", "evaluate", "--now",
                        "2026-11-24", "--format", "json", str(sample)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "anticoagulant" in {c["source"]["topic"]["code"] for c in json.loads(r.stdout)["cards"]}, r.stdout
