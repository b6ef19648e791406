"""The service against its own OpenAPI description, by Schemathesis: no 5xx, and every answer as documented.

Schemathesis generates requests for every operation from the description,
valid and invalid ones, and checks each answer: its status is documented,
its body matches the documented schema, its headers and content type too.
Writes carry a key. Bounded: a fixed number of examples per operation.

One check is left out: that every request the description allows is
accepted. Some are refused for reasons no schema states, and rightly: a
cursor the service did not issue, `year_from` after `year_to`, a year next
century, a song already there. Each is a documented 4xx.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case
from sqlalchemy.engine import URL

from app.config import Settings
from app.main import create_app
from tests.catalog import new_key

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="session")
def api(
    database_url: URL, tmp_path_factory: pytest.TempPathFactory
) -> tuple[schemathesis.schemas.BaseSchema, Settings]:
    app_settings = Settings(
        database_url=database_url.render_as_string(hide_password=False),
        data_dir=tmp_path_factory.mktemp("schemathesis"),
        # Limits are tested on their own; here they would only answer 429 to the generated flood.
        rate_limit_per_second=0,
        anonymous_rate_limit_per_second=0,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(app_settings))
    # An invalid request is refused with a 412 where what makes it invalid is the generated key, which
    # the test swaps for a real one, and its If-Match names no version of the song.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "412"]
    return schema, app_settings


@pytest.mark.parametrize("generation", ["positive", "negative"])
def test_every_answer_is_documented_and_none_is_a_server_error(
    api: tuple[schemathesis.schemas.BaseSchema, Settings], generation: str
) -> None:
    schema, app_settings = api
    key = new_key(app_settings, "admin")  # made now: other tests empty the catalog, keys included
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        mode = GenerationMode.POSITIVE if generation == "positive" else GenerationMode.NEGATIVE

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Case) -> None:  # type: ignore[type-arg]
            # The generated key is swapped for a real one; a case left without one on purpose
            # (an invalid request: the header is required) stays without.
            sent = {"Authorization": f"Bearer {key}"} if "Authorization" in (case.headers or {}) else {}
            case.call_and_validate(headers=sent, excluded_checks=[positive_data_acceptance])

        try:
            check()
        except Unsatisfiable:
            assert generation == "negative"  # an operation that takes nothing has no invalid request
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
