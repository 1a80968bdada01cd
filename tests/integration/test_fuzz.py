"""schemathesis against the service's own OpenAPI document, on the running server: whatever a
client sends, no 5xx, and every answer matches the documented schema.

Driven through schemathesis' Python API and Hypothesis (its pytest plugin predates pytest 9).
`make fuzz` runs more examples (FUZZ_EXAMPLES).
"""

import itertools
import os
from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


def test_no_input_gives_a_server_error_or_an_undocumented_answer(ranker_url):
    schema = schemathesis.openapi.from_url(f"{ranker_url}/docs.json").include(path="/inference")
    statuses: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert [op.path for op in operations] == ["/inference"]
    for operation, mode in itertools.product(operations, GenerationMode):  # valid and invalid inputs

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def fuzz(case):
            response = case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
            statuses[response.status_code] += 1

        fuzz()
    print(f"fuzz: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert sum(statuses.values()) >= MAX_EXAMPLES and statuses[400] > 0 and statuses[200] > 0
    assert not any(status >= 500 for status in statuses)
