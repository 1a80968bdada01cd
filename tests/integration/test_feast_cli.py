"""The `feast` CLI works inside the Feast repo as Feast users expect, with the documented default
Redis (127.0.0.1:6379) and nothing in the environment."""

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis

from driver_ranker.config import PROJECT_ROOT
from driver_ranker.features.online import RedisFeatureReader
from driver_ranker.features.store import open_store
from driver_ranker.jobs.data import DataSpec, write
from tests.support.stack import REDIS, repo_settings, teardown_repo

FEAST = Path(sys.executable).parent / "feast"


def feast(repo: Path, *args: str) -> str:
    """Runs `feast ARGS` inside the repo with a clean environment; returns its output."""
    env = {"PATH": os.environ["PATH"], "HOME": str(repo.parent), "LANG": "C.UTF-8"}
    done = subprocess.run(
        [str(FEAST), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output, output
    return output


def test_feast_cli_applies_lists_and_materializes_into_the_default_redis(tmp_path):
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    project = f"t_{uuid.uuid4().hex[:10]}"
    (repo / "driver_repo.py").write_text((PROJECT_ROOT / "feature_repo" / "driver_repo.py").read_text())
    yaml = (PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text()
    (repo / "feature_store.yaml").write_text(yaml.replace("project: driver_ranker", f"project: {project}"))
    write(DataSpec(n_drivers=20, days=2, n_orders=100), repo / "data")
    settings = repo_settings(repo)
    try:
        feast(repo, "apply")
        assert "driver_stats" in feast(repo, "feature-views", "list")
        feast(repo, "materialize-incremental", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"))

        # The rows are in the Redis the yaml names, under this project, in Feast's layout.
        store = open_store(settings)
        key = RedisFeatureReader(store, "driver_ranker_v1", ("conv_rate",), 1.0).redis_key(1001)
        assert key.endswith(project.encode())
        assert redis.Redis.from_url(f"redis://{REDIS}").hexists(key, "_ts:driver_stats")
        online = store.get_online_features(
            features=["driver_stats:conv_rate"], entity_rows=[{"driver_id": 1001}, {"driver_id": 1020}]
        ).to_dict()
        assert None not in online["conv_rate"]
    finally:
        teardown_repo(settings)
