"""The readers under other Feast configurations than the repo's: versioned feature views, another
join key type (Redis Cluster and Sentinel: test_readers_topologies.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from feast.types import Int32

from driver_ranker.config import PROJECT_ROOT, Settings
from driver_ranker.errors import MissingFeatures
from driver_ranker.features.online import FeastSdkReader, RedisFeatureReader, open_reader
from driver_ranker.features.store import apply, materialize
from driver_ranker.jobs.data import DataSpec, write
from tests.support.stack import (
    repo_settings,
    teardown_repo,
    use_definitions_of,
)

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips")
SERVICE = "driver_ranker_v1"
SMALL = DataSpec(n_drivers=30, days=2, n_orders=100)
IDS = [1001, 1017, 99999, 1030, 0]


def repo_copy(
    root: Path, edit_yaml: Callable[[str], str] = str, edit_code: Callable[[str], str] = str
) -> Path:
    """feature_repo/ under `root` with its own project name and generated data, edited, not applied."""
    repo = root / "feature_repo"
    repo.mkdir(parents=True)
    code = (PROJECT_ROOT / "feature_repo" / "driver_repo.py").read_text()
    (repo / "driver_repo.py").write_text(edit_code(code))
    yaml = (PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text()
    yaml = yaml.replace("project: driver_ranker", f"project: t_{uuid.uuid4().hex[:10]}")
    (repo / "feature_store.yaml").write_text(edit_yaml(yaml))
    write(SMALL, repo / "data")
    return repo


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


def sdk_values(store, ids: list[int], features: list[str] | None = None) -> dict[int, list[float]]:
    """Feast's own answer (through the feature service, or these feature references): the
    drivers it has every feature of, and their values."""
    online = store.get_online_features(
        features=features or store.get_feature_service(SERVICE), entity_rows=[{"driver_id": i} for i in ids]
    ).to_dict()
    columns = [online[name] for name in FEATURES]
    return {i: list(row) for i, *row in zip(ids, *columns, strict=True) if None not in row}


def assert_equals_feast(rows, expected: dict[int, list[float]]) -> None:
    assert rows.driver_ids == list(expected)
    np.testing.assert_array_equal(rows.matrix, np.array(list(expected.values()), dtype=np.float64))


@pytest.fixture
def shared_redis_repo(tmp_path, monkeypatch) -> Iterator[Callable[..., Settings]]:
    """Makes repo copies on the shared Redis, and removes their keys afterwards."""
    made: list[Settings] = []

    def make(**edits) -> Settings:
        settings = repo_settings(repo_copy(tmp_path / f"r{len(made)}", **edits))
        made.append(settings)
        use_definitions_of(settings.feast_repo_path, monkeypatch)
        return settings

    yield make
    for settings in made:
        teardown_repo(settings)


def test_versioned_feature_views_are_read_under_their_versioned_names(shared_redis_repo, monkeypatch):
    settings = shared_redis_repo(
        edit_yaml=lambda y: replaced(
            y,
            "  cache_ttl_seconds: 60\n",
            "  cache_ttl_seconds: 60\n  enable_online_feature_view_versioning: true\n",
        )
    )
    apply(settings)  # version 0
    code = settings.feast_repo_path / "driver_repo.py"
    code.write_text(replaced(code.read_text(), "Share of offers the driver converted.", "Converted share."))
    use_definitions_of(settings.feast_repo_path, monkeypatch)
    store = apply(settings)  # a schema change: version 1, stored as `driver_stats_v1`
    assert store.get_feature_view("driver_stats").current_version_number == 1
    materialize(store, full=True)

    admin = redis.Redis.from_url("redis://127.0.0.1:6379")
    direct = open_reader(store, SERVICE, FEATURES, 1.0)
    assert isinstance(direct, RedisFeatureReader)
    assert admin.hexists(direct.redis_key(1001), "_ts:driver_stats_v1")
    assert not admin.hexists(direct.redis_key(1001), "_ts:driver_stats")

    async def both():
        return await direct.read(IDS), await FeastSdkReader(store, SERVICE, FEATURES, 1.0).read(IDS)

    a, b = asyncio.run(both())
    expected = sdk_values(store, IDS, [f"driver_stats:{name}" for name in FEATURES])
    assert list(expected) == [1001, 1017, 1030]
    # Feast 0.67 itself reads a versioned view through a feature service under its unversioned
    # name (FeatureView.__copy__ drops current_version_number): nothing. When this fails, Feast
    # fixed it, and FeastSdkReader can read through the service again (ServiceLayout.sdk_refs).
    assert sdk_values(store, IDS) == {}
    for rows in (a, b):
        assert_equals_feast(rows, expected)
        assert rows.unknown_ids == [99999, 0]
    np.testing.assert_allclose(a.ages_s, b.ages_s, atol=1)


def join_key_typed(value_type: str, feast_type: str) -> Callable[[str], str]:
    """An edit of driver_repo.py: the driver entity's join key of this type, declared in the view."""

    def edit(code: str) -> str:
        code = replaced(code, "value_type=ValueType.INT64", f"value_type=ValueType.{value_type}")
        code = replaced(
            code, "    schema=[\n", f'    schema=[\n        Field(name="driver_id", dtype={feast_type}),\n'
        )
        return replaced(
            code,
            "from feast.types import Float32, Int64",
            f"from feast.types import Float32, Int64, {feast_type}",
        )

    return edit


def test_an_int32_join_key_is_read_with_feast_type_mapping(shared_redis_repo):
    settings = shared_redis_repo(edit_code=join_key_typed("INT32", "Int32"))
    store = apply(settings)
    assert store.get_feature_view("driver_stats").entity_columns[0].dtype == Int32
    materialize(store)
    direct = open_reader(store, SERVICE, FEATURES, 1.0)
    assert isinstance(direct, RedisFeatureReader)
    rows = asyncio.run(direct.read(IDS))
    expected = sdk_values(store, IDS)
    assert list(expected) == [1001, 1017, 1030]
    assert_equals_feast(rows, expected)


def test_a_join_key_that_is_no_integer_is_refused_with_a_clear_message(shared_redis_repo):
    settings = shared_redis_repo(edit_code=join_key_typed("STRING", "String"))
    store = apply(settings)
    for force_sdk in (False, True):
        with pytest.raises(MissingFeatures, match=r"not keyed by one integer driver id.*driver_id.*STRING"):
            open_reader(store, SERVICE, FEATURES, 1.0, force_sdk=force_sdk)
