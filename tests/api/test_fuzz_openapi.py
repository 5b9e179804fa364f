"""Property-based fuzzing of every endpoint against the server's own OpenAPI document.

Schemathesis reads ``/openapi.json`` from a real server process, generates valid and
invalid requests for every operation, sends them with a secret test key and checks: no 5xx,
every status code documented, every body and header as the document says, invalid input
rejected with a 4xx. Runs are seeded and bounded, so the suite stays fast and repeatable.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import AppKeys
from tests.support.harness import ServerProcess

MAX_EXAMPLES = 30

# What "the response contradicts the document" means. ``positive_data_acceptance`` is left
# out on purpose: schema-valid input can still break a documented rule the schema cannot
# express (progress on a completed job, a childIndex beyond the parent's totalChildren),
# which the API answers with a documented 400.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


@pytest.fixture
def fuzz_jobs(server: ServerProcess, keys: AppKeys) -> dict[str, list[dict[str, Any]]]:
    """Real jobs for the fuzzer to aim at: plain ones and parents (with a child)."""
    with httpx.Client(base_url=f"{server.url}/v1", headers=keys.auth(), timeout=30) as c:

        def create(**fields: Any) -> dict[str, Any]:
            body = {"jobType": "fuzz", "userId": "fuzz_user", "title": "Fuzz", **fields}
            response = c.post("/jobs", json=body)
            assert response.status_code == 201, response.text
            return response.json()

        plain = [create() for _ in range(6)]
        parents = [create(totalChildren=5) for _ in range(3)]
        children = [create(parentJobId=p["id"], childIndex=0, userId=p["userId"]) for p in parents]
    return {"plain": plain, "parents": parents, "children": children}


def _streams(operation: dict[str, Any]) -> bool:
    """True for an event-stream operation: it never ends, so it is not fuzzed here."""
    return any(
        "text/event-stream" in (response.get("content") or {})
        for response in operation.get("responses", {}).values()
    )


def _operation_labels() -> list[str]:
    """Every operation of the app's document (built without a database, for test ids)."""
    from app.main import create_app

    doc = create_app(database_url="postgresql://collect@127.0.0.1:1/none").openapi()
    return [
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if not _streams(operation) and not path.endswith("/sse")  # SSE has its own tests
    ]


@pytest.fixture(scope="module")
def served_schema(server: ServerProcess) -> Any:
    """The document the running server serves at ``/openapi.json``."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # The key is sent by the test; the fuzzer does not generate Authorization headers.
    schema.config.generation.update(deterministic=True, with_security_parameters=False)
    return schema


def _pick(case: Any, pool: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Deterministically aim about two thirds of the cases at a real job."""
    seed = hashlib.sha256(repr((case.path_parameters, case.body, case.query)).encode()).digest()
    if seed[0] % 3 == 0:
        return None
    return pool[seed[1] % len(pool)]


def _aim(case: Any, jobs: dict[str, list[dict[str, Any]]]) -> None:
    """Point some generated ids at real jobs, so writes reach the domain rules too."""
    pool = [*jobs["plain"], *jobs["children"], *jobs["parents"]]
    if case.path_parameters and "job_id" in case.path_parameters:
        target = _pick(case, pool)
        if target is not None:
            case.path_parameters["job_id"] = target["id"]
    if case.method == "POST" and case.path == "/v1/jobs" and isinstance(case.body, dict):
        parent = _pick(case, jobs["parents"])
        if parent is not None and "parentJobId" in case.body:
            case.body["parentJobId"] = parent["id"]
            case.body["userId"] = parent["userId"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("label", _operation_labels())
def test_endpoint_conforms_to_its_openapi_document(
    label: str,
    mode: GenerationMode,
    served_schema: Any,
    keys: AppKeys,
    fuzz_jobs: dict[str, list[dict[str, Any]]],
) -> None:
    operation = served_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served document"
    session = requests.Session()
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        if mode is GenerationMode.POSITIVE:  # aiming would repair a negative case
            _aim(case, fuzz_jobs)
        response = case.call_and_validate(
            headers=keys.auth(), checks=CHECKS, session=session, timeout=30
        )
        statuses.append(response.status_code)

    try:
        check()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise
        pytest.skip(f"nothing in {label} can be made invalid (no constrained input)")
    finally:
        session.close()
    assert statuses, "the fuzzer sent nothing"
