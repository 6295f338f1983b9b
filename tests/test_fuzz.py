"""Property-based fuzzing of the OpenAPI spec against the real app (torch engine, tiny checkpoint).

schemathesis generates valid and invalid requests from ``/openapi.json`` and
checks every response (``call_and_validate``): no 5xx, and status codes,
headers and bodies conform to the spec. Its pytest plugin does not support
pytest 9 yet, so the hypothesis strategies are driven directly.

One check is off: "schema-valid data is accepted". JSON Schema cannot say "item
ids are unique within the request", and the item/character limits are
deployment settings; such requests get 422/400 by design (tests/test_api.py
covers each). Every other check, including "invalid data is rejected", is on.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.apps import InProcessServer  # noqa: E402

EXAMPLES_PER_OPERATION = 80


@pytest.fixture(scope="module")
def api_schema(tiny_artifact: Path, cache_dir: Path):
    app = create_app(
        Settings(model_dir=tiny_artifact, cache_dir=cache_dir, engine="torch", dtype="float32", max_items=64)
    )
    with InProcessServer(app) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json")


def test_openapi_fuzz_finds_no_5xx_and_no_schema_violations(api_schema) -> None:
    operations = [op.ok() for op in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /v1/score", "GET /readyz"}
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for op, mode in itertools.product(operations, list(GenerationMode)):
        name = f"{op.method.upper()} {op.path} ({mode.value})"

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case) -> None:
            try:
                response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            except Exception as e:  # record and let hypothesis shrink to a minimal example
                failures.append(f"{name}: {type(e).__name__}: {str(e)[:600]}")  # noqa: B023
                raise

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE and op.method.upper() == "GET", name
            continue  # a GET without parameters has no invalid inputs
        except Exception as e:
            if not failures:  # hypothesis itself failed before any case ran
                raise
            print("shrunk failure:", type(e).__name__, str(e)[:300])
    print("schemathesis status counts:", dict(sorted(statuses.items())))
    assert not failures, "\n\n".join(failures[-3:])
    assert sum(statuses.values()) >= EXAMPLES_PER_OPERATION
    assert not any(code >= 500 for code in statuses)
