"""Schemathesis against the served OpenAPI schema: no server error, answers match the schema.

The app is served on loopback by pytest-django's live_server (a real HTTP server thread);
schemathesis loads the schema from it and sends generated requests to every operation, both
valid (positive) and invalid (negative) ones, with an API key that holds every scope. Each
answer goes through schemathesis' checks: no 5xx, a documented status code and content type,
a body that matches the documented schema, invalid data refused (all but "schema-valid data
is accepted": the API refuses what only the database can judge, such as an unknown product).
Examples are derandomised (the same run every time) and bounded per operation, to keep the
run near a minute.

(The operations are driven from one test with Hypothesis' ``@given`` rather than with
``schemathesis.pytest.from_fixture``, whose lazy loader does not work with pytest 9.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from omnichannel.api.models import ApiKey, Scope
from omnichannel.profiles.models import EventSource

EXAMPLES_PER_OPERATION = 25


@pytest.mark.timeout(300)
def test_the_api_survives_generated_requests(transactional_db, live_server):
    _key, raw = ApiKey.objects.create_key(
        name="fuzz", source=EventSource.APP, scopes=list(Scope.values), rate_limit="100000/min"
    )
    headers = {"Authorization": f"Api-Key {raw}"}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/omnichannel/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6

    failures: list[str] = []
    calls: dict[int, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:
                response = case.call_and_validate(
                    base_url=live_server.url,
                    headers=headers,
                    # Schema-valid is not always acceptable: a phone must be a real number,
                    # a product must exist, an event must name someone. Those are 400s with
                    # the field named, checked by the other tests.
                    excluded_checks=[positive_data_acceptance],
                )
                calls[response.status_code] = calls.get(response.status_code, 0) + 1

            try:
                run()
            except Exception as exc:  # noqa: BLE001  (collect every operation's failure)
                failures.append(f"{operation.label} [{mode}]: {exc}")

    assert not failures, "\n\n".join(failures)
    assert not any(code >= 500 for code in calls)
    # Both sides were exercised: requests stored and requests refused.
    assert {201, 400} <= set(calls), calls
