"""`make bento` on these machines: a Bento that carries the champion it was built with."""

import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from driver_ranker.config import PROJECT_ROOT
from tests.support.stack import settings_env


@pytest.fixture(scope="module")
def built_bento(tmp_path_factory, feast_settings, champion):
    """Builds with the session's registry into a BentoML home of the test's own."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = os.environ | settings_env(feast_settings) | {"BENTOML_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "driver_ranker.ops.packaging"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (bento_dir,) = (p.parent for p in (home / "bentos" / "driver-ranker").glob("*/bento.yaml"))
    return env, bento_dir


def bentoml(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bentoml", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_bento_names_and_carries_the_champion(built_bento, champion, tmp_path):
    env, bento_dir = built_bento
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    (model,) = info["models"]
    name, version = model["tag"].split(":")
    assert name == "driver-ranker" and version.startswith(f"v{champion.version}-")

    # bentofile.yaml declares `models: [driver-ranker:latest]`: nothing names the tag in the image.
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "BENTO_MODEL_TAG" not in dockerfile
    assert "USER bentoml" in dockerfile and "EXPOSE 3000" in dockerfile
    # No compiler, and requirements.lock installed as it is (deployment/bento.Dockerfile.j2).
    assert "build-essential" not in dockerfile and "--no-deps" in dockerfile

    stored = bentoml(env, "models", "get", model["tag"], "-o", "yaml")
    assert stored.returncode == 0, stored.stderr
    assert yaml.safe_load(stored.stdout)["labels"]["mlflow_version"] == champion.version

    exported = tmp_path / "driver-ranker.bento"
    result = bentoml(env, "export", f"driver-ranker:{bento_dir.name}", str(exported))
    assert result.returncode == 0, result.stderr
    with tarfile.open(exported) as archive:
        names = [n.removeprefix("./") for n in archive.getnames()]
    carried = [n for n in names if n.startswith(f"models/driver-ranker/{version}/")]
    assert any(n.endswith("mlflow_model/MLmodel") for n in carried)
    assert any(n.endswith("model.skops") for n in carried)  # MLflow 3 saves scikit-learn as skops


def test_bento_requirements_can_load_the_model(built_bento):
    _, bento_dir = built_bento
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text().lower()
    for package in ("mlflow-skinny==3.17.2", "skops==", "scikit-learn==1.9.1", "feast==0.67.0", "redis=="):
        assert package in requirements, package
    assert (bento_dir / "src" / "feature_repo" / "feature_store.yaml").exists()
    data = bento_dir / "src" / "feature_repo" / "data"
    assert [p.name for p in data.iterdir()] == [".gitkeep"]  # the mount point, no data
