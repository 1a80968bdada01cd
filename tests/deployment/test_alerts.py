"""The alerting rules (deployment/prometheus/alerts.yml) with Prometheus's own tool: they load,
Prometheus's config finds them, and each alert fires on its synthetic series and stays quiet on
healthy ones (alerts.test.yml)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from driver_ranker.config import PROJECT_ROOT

RULES = PROJECT_ROOT / "deployment" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: `apt-get install prometheus` (Debian) or a Prometheus release's tarball"
        )
    return path


def run(promtool: str, *args: str, cwd: Path = RULES) -> str:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rules() -> list[dict]:
    return [
        rule
        for group in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]


def test_the_rules_and_the_config_that_loads_them_are_valid(promtool):
    assert "SUCCESS: 12 rules found" in run(promtool, "check", "rules", "alerts.yml")
    assert "1 rule files found" in run(promtool, "check", "config", "prometheus.yml")


def test_every_alert_says_what_it_means_and_what_to_check(promtool):
    for rule in rules():
        annotations = rule["annotations"]
        assert annotations["summary"] and len(annotations["runbook"]) > 80, rule["alert"]
        assert rule["labels"]["severity"] in ("page", "warn", "info"), rule["alert"]


def test_each_alert_fires_on_its_series_and_not_before(promtool, tmp_path):
    runbooks = {rule["alert"]: " ".join(rule["annotations"]["runbook"].split()) for rule in rules()}
    suite = yaml.safe_load((RULES / "alerts.test.yml").read_text())
    tested = set()
    for test in suite["tests"]:
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                alert["exp_annotations"]["runbook"] = runbooks[case["alertname"]]
                tested.add(case["alertname"])
    assert tested == set(runbooks), set(runbooks) - tested  # every alert fires in some test
    shutil.copy(RULES / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "alerts.test.yml").write_text(yaml.safe_dump(suite, sort_keys=False))
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts.test.yml", cwd=tmp_path)
