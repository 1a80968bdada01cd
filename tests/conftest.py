"""Session fixtures: one Feast repo (own project in the shared Redis) and one MLflow registry with
a trained champion, built once and cleaned up after the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from driver_ranker.config import Settings
from driver_ranker.jobs.data import DataSpec
from driver_ranker.jobs.training import TrainingReport, train
from tests.support.stack import REDIS, make_feast_repo, repo_settings, teardown_repo


@pytest.fixture(scope="session", autouse=True)
def _redis_answers() -> None:
    try:
        redis.Redis.from_url(f"redis://{REDIS}", socket_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.exit(f"the tests need Redis at {REDIS} ({exc}): start redis-server", returncode=2)


@pytest.fixture(scope="session")
def feast_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Default-sized data (the AUC gate is asserted on it) in the test's own Feast project."""
    repo = make_feast_repo(tmp_path_factory.mktemp("stack"), DataSpec())
    settings = repo_settings(repo)
    yield settings
    teardown_repo(settings)


@pytest.fixture(scope="session")
def champion(feast_settings: Settings) -> TrainingReport:
    """The first version trained on the session's data; it becomes the champion."""
    return train(feast_settings)
