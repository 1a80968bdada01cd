"""The compose file agrees with the code: what only Docker runs is checked against what the
process-topology tests prove (tests/integration/test_stack.py)."""

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from driver_ranker.config import PROJECT_ROOT, Settings
from driver_ranker.stack import ALLOWED_HOSTS

DEPLOYMENT = PROJECT_ROOT / "deployment"
# Settings the containers may leave to their defaults, and why.
NOT_IN_COMPOSE = {
    "mlflow_artifact_root": "only used with a local SQLite registry, not with a server",
    "bento_model_tag": "set in the image by `make bento`: the model that image carries",
    "batch_chunk_rows": "batch scoring is a job (`make batch`), not part of the service",
}
LONG_RUNNING = {"redis", "postgres", "mlflow", "ranker", "prometheus"}


def dotenv(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(value, env: dict[str, str]):
    """Compose's `${VAR}` substitution from deployment/.env; an unset variable fails the test."""
    if isinstance(value, str):

        def lookup(match: re.Match) -> str:
            assert match.group(1) in env, f"${{{match.group(1)}}} is not set in deployment/.env"
            return env[match.group(1)]

        return re.sub(r"\$\{(\w+)\}", lookup, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    raw = yaml.safe_load((DEPLOYMENT / "docker-compose.yml").read_text())
    return interpolate(raw, dotenv(DEPLOYMENT / ".env"))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_names() -> dict[str, str]:
    """Each setting's environment variable (pydantic-settings: the field name, upper case)."""
    return {name: name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize("service", ["ranker", "init"])
def test_every_setting_is_set_for_the_ranker_and_the_init_job(services, service):
    environment = services[service]["environment"]
    for field, variable in env_names().items():
        if field not in NOT_IN_COMPOSE:
            assert variable in environment, f"{service} does not set {variable}"
    assert set(environment) <= set(env_names().values()), "compose sets a variable the code does not read"
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in environment.items()})
    assert settings.online_store == "redis"
    # Left empty in .env, the secrets and the shadow are off, not empty strings anybody can send.
    assert settings.admin_token is None and settings.api_key is None and settings.shadow_alias is None


def test_names_ports_and_urls_agree(services):
    environment = services["ranker"]["environment"]
    redis_host, redis_port = environment["REDIS_CONNECTION_STRING"].split(",")[0].split(":")
    assert redis_host in services and redis_port == "6379"
    mlflow = urlparse(environment["MLFLOW_TRACKING_URI"])
    assert mlflow.hostname in services and mlflow.scheme == "http"
    assert f"--port={mlflow.port}" in services["mlflow"]["command"]
    container_port = int(environment["PORT"])
    assert container_port == Settings.model_fields["port"].default
    assert any(p.endswith(f":{container_port}") for p in services["ranker"]["ports"])
    assert f"127.0.0.1:{container_port}/readyz" in " ".join(services["ranker"]["healthcheck"]["test"])
    assert "ranker:3000" in (DEPLOYMENT / "prometheus.yml").read_text()


def test_mlflow_allows_the_host_the_ranker_sends(services):
    host = urlparse(services["ranker"]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    (flag,) = [arg for arg in services["mlflow"]["command"] if arg.startswith("--allowed-hosts=")]
    allowed = flag.split("=", 1)[1].split(",")
    assert host in allowed
    # `make stack` allows what compose allows, so the process test proves the same setting.
    assert set(allowed) == set(ALLOWED_HOSTS.split(","))
    assert "--serve-artifacts" in services["mlflow"]["command"]
    assert "postgresql+psycopg2://" in " ".join(services["mlflow"]["command"])


def test_long_running_services_are_health_checked_and_awaited(services):
    for name in LONG_RUNNING:
        assert "healthcheck" in services[name], name
    assert "healthcheck" not in services["init"] and services["init"]["restart"] == "no"
    depends = services["ranker"]["depends_on"]
    assert depends["redis"]["condition"] == depends["mlflow"]["condition"] == "service_healthy"
    assert depends["init"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["prometheus"]["profiles"] == ["monitoring"]


def test_the_ranker_image_and_its_build_agree(services):
    bentofile = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())
    assert services["ranker"]["image"] == services["init"]["image"] == "driver-ranker:latest"
    assert bentofile["name"] == "driver-ranker"
    assert {e["name"] for e in bentofile["envs"]} <= set(env_names().values())
    # The Feast registry volume is mounted where the service looks for it, read-only for the ranker.
    repo = services["ranker"]["environment"]["FEAST_REPO_PATH"]
    assert services["ranker"]["volumes"] == [f"feast-data:{repo}/data:ro"]
    assert services["init"]["volumes"] == [f"feast-data:{repo}/data"]
    assert services["init"]["entrypoint"][-2:] == ["driver_ranker.bootstrap", "prepare"]
    mlflow_pin = re.search(r'"mlflow==([\d.]+)"', (PROJECT_ROOT / "pyproject.toml").read_text()).group(1)
    assert services["mlflow"]["build"]["args"]["MLFLOW_VERSION"] == mlflow_pin
