"""The Dockerfile's HEALTHCHECK (http://127.0.0.1:PORT/health) works with the configuration the README
asks for in production (issuers and public_base_url): the loopback names are served beside the public
name (it answered 400 'Invalid host header' and the container stayed unhealthy)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import issuer_for

ROOT = Path(__file__).resolve().parents[2]


def test_the_container_health_check_passes_with_issuers_and_a_public_base_url(start_service, fake_evaluator, signer):
    service = start_service(fake_evaluator, issuers=issuer_for(signer), public_base_url="https://cds.example.org")
    probe = re.search(r'"http://(127\.0\.0\.1):\$\{CDS_TPI_PORT\}(/health)"', (ROOT / "Dockerfile").read_text())
    assert probe, "the Dockerfile's HEALTHCHECK URL changed: update this test"
    assert service.get(probe.group(2)).status_code == 200  # Host: 127.0.0.1:PORT, as the probe sends it
    assert service.get("/health", headers={"Host": "cds.example.org"}).status_code == 200
    assert service.get("/health", headers={"Host": "attacker.example"}).status_code == 400
