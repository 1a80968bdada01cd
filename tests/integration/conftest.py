from collections.abc import Iterator

import httpx
import pytest

from tests.support.stack import ranker_server


@pytest.fixture(scope="module")
def ranker_url(feast_settings, champion) -> Iterator[str]:
    """The service with two workers, on the session's Feast project and registry."""
    with ranker_server(feast_settings, workers=2) as url:
        yield url


@pytest.fixture(scope="module")
def client(ranker_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ranker_url, timeout=10) as c:
        yield c
