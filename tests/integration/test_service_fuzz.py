"""Fuzzing every operation of the OpenAPI schema (schemathesis strategies, valid and invalid inputs) against
the running server finds no 500, and every response fits the documented statuses, types and schemas."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)

from tests.integration.test_service_support import run_server, service_env  # noqa: E402,F401

MAX_EXAMPLES = 25  # per operation and mode: about 12 operations x 2 modes, about a minute on two cores
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_schema(service_env):
    with run_server(service_env.settings(max_queue=1024)) as live:
        yield live, schemathesis.openapi.from_url(f"{live.url}/openapi.json")


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_fuzz_finds_no_server_error(live_schema, mode):
    live, schema = live_schema
    operations = _operations(schema)
    labels = {op.label for op in operations}
    assert {"POST /search", "POST /qa", "GET /videos", "GET /failures", "GET /videos/{video_id}",
            "GET /videos/{video_id}/stream", "GET /videos/{video_id}/preview", "POST /classify",
            "GET /videos/{video_id}/similar"} <= labels
    unsatisfiable: list[str] = []
    for operation in operations:
        has_input = any(True for _ in operation.iter_parameters()) or operation.get_request_payload_content_types()
        if mode is GenerationMode.NEGATIVE and not has_input:
            continue  # nothing to make invalid (GET /healthz, /stats, ...)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            case.call_and_validate(base_url=live.url, checks=CHECKS, timeout=30)

        try:
            run()
        except Unsatisfiable:
            # only optional API-key inputs (GET /stats, /metrics): no invalid value can be made
            assert mode is GenerationMode.NEGATIVE, operation.label
            unsatisfiable.append(operation.label)
    assert not {"POST /search", "POST /qa", "POST /classify", "GET /videos/{video_id}/similar"} & set(
        unsatisfiable), unsatisfiable
