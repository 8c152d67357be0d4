"""Installing and running (issue 9 items 1-5): supported Python versions, the per-user database
place, configuration from the environment, the service as an extra, the test tooling's promises."""

from __future__ import annotations

import importlib.util
import os
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_tpi.cli import cli
from cds_tpi.service.config import default_database_url, load_config, sqlite_file

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_supported_python_versions_are_declared_and_tested():
    # durable-rules 2.0.28's C extension calls PyEval_CallObject, which Python 3.13 removed
    assert PYPROJECT["project"]["requires-python"] == ">=3.11,<3.13"
    classifiers = PYPROJECT["project"]["classifiers"]
    assert {"Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"} <= set(classifiers)
    assert not any("3.13" in c for c in classifiers)
    tox = (ROOT / "tox.ini").read_text()
    assert "env_list = py311, py312" in tox and "skip_missing_interpreters = true" in tox
    assert sys.version_info[:2] in ((3, 11), (3, 12))


def test_cli_dependencies_leave_the_service_to_extras():
    deps = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    for service_only in ("starlette", "uvicorn", "httpx", "joserfc", "sqlalchemy", "psycopg", "prometheus"):
        assert service_only not in deps
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(d.startswith("psycopg") for d in extras["postgres"])
    assert "cds-tpi[service,postgres]" in extras["test"]


def test_default_database_is_in_the_per_user_data_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    url = default_database_url()
    assert url == f"sqlite:///{tmp_path / 'xdg' / 'cds-tpi' / 'cds-tpi.sqlite3'}"
    assert load_config(None).database_url == url  # read when the config is built, not at import
    assert sqlite_file(url) == tmp_path / "xdg" / "cds-tpi" / "cds-tpi.sqlite3"
    assert sqlite_file("sqlite:///relative.sqlite3") == Path("relative.sqlite3")
    assert sqlite_file("postgresql://u@h/db") is None and sqlite_file("sqlite://") is None


def test_stats_elsewhere_creates_nothing_and_says_where_it_looked(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "CDS_TPI_DATABASE_URL": None, "CDS_TPI_CONFIG": None}
    r = run("stats", env=env)
    assert r.exit_code == 1
    assert f"no service database at {tmp_path / 'xdg' / 'cds-tpi' / 'cds-tpi.sqlite3'}" in r.output
    assert os.listdir(elsewhere) == []
    assert not (tmp_path / "xdg").exists()


def test_stats_reads_database_url_and_config_from_the_environment(tmp_path):
    from cds_tpi.service.storage import Storage

    url = f"sqlite:///{tmp_path}/svc.sqlite3"
    store = Storage(url)
    store.create_schema()
    store.dispose()
    r = run("stats", env={"CDS_TPI_DATABASE_URL": url, "CDS_TPI_CONFIG": None})
    assert r.exit_code == 0, r.output
    assert "no cards recorded yet" in r.output
    config = tmp_path / "service.yaml"
    config.write_text(f"database_url: {url}\n")
    r = run("stats", "--format", "json", env={"CDS_TPI_CONFIG": str(config), "CDS_TPI_DATABASE_URL": None})
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "[]"
    r = run("stats", env={"CDS_TPI_DATABASE_URL": f"sqlite:///{tmp_path}/other.sqlite3", "CDS_TPI_CONFIG": None})
    assert r.exit_code == 1 and "other.sqlite3" in r.output


def test_serve_options_come_from_the_environment():
    from cds_tpi.cli.serve import serve

    envvars = {p.name: p.envvar for p in serve.params}
    assert envvars["database_url"] == "CDS_TPI_DATABASE_URL" and envvars["config_file"] == "CDS_TPI_CONFIG"
    assert envvars["host"] == "CDS_TPI_HOST" and envvars["port"] == "CDS_TPI_PORT"


def test_service_commands_without_the_service_extra_say_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    for command in ("serve", "stats"):
        r = run(command)
        assert r.exit_code == 2
        assert "pip install 'cds-tpi[service]'" in r.output and "uvicorn" in r.output


def test_skip_reasons_are_reported():
    assert "-rs" in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"]


def test_synthea_path_comes_from_the_environment(tmp_path):
    from tests.conftest import SHARED, synthea_dir

    assert synthea_dir({"CDS_TPI_SYNTHEA": str(tmp_path)}) == tmp_path
    assert synthea_dir({}) == SHARED / "fhir" / "synthea-r4"
    assert "CDS_TPI_SYNTHEA" in (ROOT / "tox.ini").read_text()


def test_fhir_server_tests_skip_without_a_recent_node_and_fail_under_ci(tmp_path, monkeypatch):
    from tests.service import conftest as service

    fake = tmp_path / "node"
    fake.write_text("#!/bin/sh\necho v18.19.0\n")  # Debian 12's nodejs
    fake.chmod(0o755)
    assert service._node_version(str(fake)) == (18, 19) < service.NODE_MIN
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="npm is not installed"):
        service._skip_or_fail("npm is not installed")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs Node >= 20\.19"):
        service._skip_or_fail("npm is not installed")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "node@20" in ci and "apt_install chromium" in ci
