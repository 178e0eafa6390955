"""Schemathesis against /docs.json on a real `bentoml serve`: every operation, valid and invalid
requests, no 5xx and no reply that the document does not describe (status or body).

A bounded run (fixed seed, ~40 cases per operation and phase, well under a minute); the long
run is `python -m bench.reliability.fuzz_openapi` (docs/reliability.md has its counts).
"""

from __future__ import annotations

import pytest
from test_service_http import (  # store is a fixture
    free_port,
    server_env,
    start_server,
    stop,
    store,  # noqa: F401
)

from bench.reliability.fuzz_openapi import run_schemathesis, summary


@pytest.fixture(scope="module")
def url(store, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, base = start_server(server_env(store, CIFAR2_MAX_IMAGES="16"), free_port(), log)
    yield base
    stop(proc)
    # A 4xx is a WARNING line; a traceback in the log would mean a fault the replies hid.
    assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


def test_schemathesis_finds_no_server_error_and_no_contract_failure(url, tmp_path):
    result = run_schemathesis(url, max_examples=40, seed=20261125, workdir=tmp_path,
                              timeout_s=300)
    report = summary(result)
    ops = result["operations"]
    assert ops["total"] >= 7 and ops["tested"] == ops["total"] and not ops["errored"], report
    assert result["test_cases"]["generated"] >= 100, report
    assert result["failures"] == [] and result["errors"] == [], report
