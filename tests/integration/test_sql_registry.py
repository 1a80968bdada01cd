"""Feast's SQL registry on PostgreSQL (FEAST_REGISTRY): `make features` applies and materializes
through it, no registry file is written, and rankers started from folders that hold only the
feature definitions (no data, no registry file: other hosts) read it and answer alike. The local
PostgreSQL, a database of the test's own."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from driver_ranker.config import PROJECT_ROOT, Settings
from driver_ranker.features.store import apply, materialize, open_store
from driver_ranker.jobs.data import DataSpec
from tests.support.stack import make_feast_repo, ranker_server

POSTGRES = "host=127.0.0.1 port=5432 user=postgres connect_timeout=2"


@pytest.fixture
def registry_url() -> Iterator[str]:
    try:
        admin = psycopg.connect(f"{POSTGRES} dbname=postgres")
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({exc})")
    admin.autocommit = True
    database = f"feast_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{database}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE {database} WITH (FORCE)")
        admin.close()


def definitions_only(source: Settings, folder) -> Settings:
    """Another host's view of the repo: feature_store.yaml and the definitions, nothing else."""
    folder.mkdir()
    for name in ("feature_store.yaml", "driver_repo.py"):
        shutil.copy(source.feast_repo_path / name, folder / name)
    return source.model_copy(update={"feast_repo_path": folder})


@pytest.mark.slow
def test_rankers_on_other_hosts_share_the_sql_registry(tmp_path, registry_url, feast_settings, champion):
    repo = make_feast_repo(
        tmp_path, DataSpec(n_drivers=20, days=2, n_orders=100), feast_registry=registry_url
    )
    settings = feast_settings.model_copy(
        update={"feast_repo_path": repo, "feast_registry": SecretStr(registry_url)}
    )
    try:
        assert not (repo / "data" / "registry.db").exists()
        assert materialize(apply(settings)) == "incremental"  # the registry remembers the first run
        assert open_store(settings).get_feature_service("driver_ranker_v1").name == "driver_ranker_v1"
        answers = []
        for host in ("host-a", "host-b"):
            elsewhere = definitions_only(settings, tmp_path / host)
            with ranker_server(elsewhere, workers=1) as url:
                response = httpx.post(f"{url}/inference", json={"driver_ids": [1001, 1002, 1003, 99999]})
                assert response.status_code == 200, response.text
                answers.append(response.json())
        assert answers[0]["scores"] == answers[1]["scores"] and len(answers[0]["scores"]) == 3
        assert answers[0]["unknown_driver_ids"] == [99999]
    finally:
        open_store(settings).teardown()


def test_the_repo_yaml_keeps_a_file_registry_by_default():
    settings = Settings()
    assert settings.feast_registry is None
    assert open_store(settings).config.registry.registry_type == "file"
    assert (PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text().count("registry.db") == 1
