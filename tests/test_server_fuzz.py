"""Schemathesis over the server's own OpenAPI schema: no 500s, every response matches the schema.

Plumbing only (ColorAligner index, in-process ASGI calls); the number of examples per
operation is bounded so the whole run takes seconds. (schemathesis' pytest plugin does not
run under pytest 9 yet, so the operations are walked here with hypothesis directly.)
"""

from __future__ import annotations

import schemathesis
from conftest import ColorAligner
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance
from server_kit import client, color_index

from retrieval.server.app import ServerSettings

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = 30


def test_no_server_errors_and_responses_match_the_schema(tmp_path):
    index, _ = color_index(tmp_path)
    api = client(ServerSettings(indexes=[str(index)], max_upload_mb=1), aligner=ColorAligner())
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app, headers={"host": "127.0.0.1"})
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"GET /api/search", "POST /api/search", "POST /api/search/upload", "POST /knn-service", "POST /metadata"} <= labels
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def fuzz(case):
            case.call_and_validate(headers={"host": "127.0.0.1"}, checks=CHECKS)
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1

        fuzz()
    assert set(calls) == labels and calls["GET /api/search"] >= EXAMPLES // 2
