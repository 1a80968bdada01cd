"""Release commands move the registry's aliases (a real SQLite registry)."""

import pytest
from mlflow.exceptions import MlflowException

from driver_ranker.model.registry import connect, version_for_alias
from driver_ranker.ops.release import PREVIOUS_ALIAS, promote, rollback, set_canary
from tests.support.registry import register_logistic
from tests.support.stack import repo_settings


@pytest.fixture
def registry(tmp_path, feast_settings):
    settings = repo_settings(feast_settings.feast_repo_path, mlflow_dir=tmp_path)
    versions = [register_logistic(settings) for _ in range(2)]
    return settings, connect(settings), versions


def alias(client, settings, name):
    version = version_for_alias(client, settings.model_name, name)
    return None if version is None else str(version.version)


def test_promote_keeps_the_previous_champion_and_rollback_swaps_back(registry):
    settings, client, (v1, v2) = registry
    promote(client, settings, v1)
    assert alias(client, settings, "champion") == v1 and alias(client, settings, PREVIOUS_ALIAS) is None
    promote(client, settings, v2)
    assert (alias(client, settings, "champion"), alias(client, settings, PREVIOUS_ALIAS)) == (v2, v1)
    rollback(client, settings)
    assert (alias(client, settings, "champion"), alias(client, settings, PREVIOUS_ALIAS)) == (v1, v2)
    assert "already" in promote(client, settings, v1)


def test_canary_sets_its_alias_and_unknown_versions_fail(registry):
    settings, client, (_, v2) = registry
    set_canary(client, settings, v2)
    assert alias(client, settings, settings.canary_alias) == v2
    with pytest.raises(MlflowException):
        promote(client, settings, "99")


def test_rollback_without_previous_says_so(registry):
    settings, client, (v1, _) = registry
    promote(client, settings, v1)
    with pytest.raises(SystemExit, match="no 'previous' alias"):
        rollback(client, settings)
