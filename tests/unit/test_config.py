import pytest
from pydantic import ValidationError

from driver_ranker.config import PROJECT_ROOT, Settings


def test_defaults_are_those_of_the_design(monkeypatch):
    for name in ("PORT", "REDIS_CONNECTION_STRING", "MLFLOW_TRACKING_URI", "MODEL_NAME", "MODEL_ALIAS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.port == 3000
    assert settings.redis_connection_string == "127.0.0.1:6379"
    assert settings.mlflow_tracking_uri == f"sqlite:///{PROJECT_ROOT / 'artifacts' / 'mlflow.db'}"
    assert (settings.model_name, settings.model_alias) == ("driver-ranker", "champion")
    assert settings.feast_yaml == PROJECT_ROOT / "feature_repo" / "feature_store.yaml"
    assert settings.max_driver_ids == 1000 and settings.workers >= 1


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("PORT", "4000")
    monkeypatch.setenv("ONLINE_STORE", "sqlite")
    monkeypatch.setenv("MAX_DRIVER_IDS", "10")
    settings = Settings(_env_file=None)
    assert settings.port == 4000 and settings.max_driver_ids == 10
    assert settings.feast_yaml.name == "feature_store.sqlite.yaml"


def test_empty_secrets_are_unset(monkeypatch):
    monkeypatch.setenv("ADMIN_TOKEN", "")
    monkeypatch.setenv("API_KEY", "  ")
    settings = Settings(_env_file=None)
    assert settings.admin_token is None and settings.api_key is None
    monkeypatch.setenv("ADMIN_TOKEN", "t0k3n")
    assert Settings(_env_file=None).admin_token.get_secret_value() == "t0k3n"


def test_offline_store_spark_picks_the_spark_repo_on_redis_only(monkeypatch):
    monkeypatch.delenv("ONLINE_STORE", raising=False)
    monkeypatch.setenv("OFFLINE_STORE", "spark")
    assert Settings(_env_file=None).feast_yaml.name == "feature_store.spark.yaml"
    monkeypatch.setenv("ONLINE_STORE", "sqlite")
    with pytest.raises(ValidationError, match="OFFLINE_STORE=spark needs ONLINE_STORE=redis"):
        Settings(_env_file=None)
    monkeypatch.setenv("OFFLINE_STORE", "bigquery")
    with pytest.raises(ValidationError, match="offline_store"):
        Settings(_env_file=None)
