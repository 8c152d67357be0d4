"""Shared fixtures: one Evaluator per test session (durable-rules wants one engine per process)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "fhir_samples"
RULES = ROOT / "rules"
SHARED = ROOT.parent / "shared"


def synthea_dir(environ=os.environ) -> Path:
    """The Synthea R4 bundles: $CDS_TPI_SYNTHEA, else ../shared/fhir/synthea-r4 next to the checkout
    (tests that need them skip with this path in their reason when it is missing)."""
    return Path(environ["CDS_TPI_SYNTHEA"]) if environ.get("CDS_TPI_SYNTHEA") else SHARED / "fhir" / "synthea-r4"


SYNTHEA = synthea_dir()
NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def evaluator():
    from cds_tpi.pipeline import Evaluator

    return Evaluator.load(RULES)


@pytest.fixture(scope="session")
def evaluator_r5():
    from cds_tpi.pipeline import Evaluator

    return Evaluator.load(RULES, fhir_version="R5")
