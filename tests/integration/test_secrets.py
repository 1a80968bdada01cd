"""Secrets pass through from the environment and never come out: not in answers, errors, /model,
/metrics or the logs."""

import httpx

from driver_ranker.jobs.data import DataSpec
from tests.support.stack import make_feast_repo, ranker_server, redis_server, repo_settings

REDIS_PASSWORD = "redis-pw-7c1f0e"
MLFLOW_PASSWORD = "mlflow-pw-93ab4d"
ADMIN_TOKEN = "admin-tok-55e2aa"


def test_secrets_work_and_never_leak(tmp_path, feast_settings, champion):
    with redis_server(password=REDIS_PASSWORD) as (proc, address):
        connection = (
            f"password={REDIS_PASSWORD},{address}"  # the password first: messages still name host:port
        )
        repo = make_feast_repo(tmp_path, DataSpec(n_drivers=20, days=2, n_orders=100), redis=connection)
        settings = repo_settings(
            repo, redis=connection, mlflow_dir=feast_settings.mlflow_artifact_root.parent
        )
        env = {
            "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
            "MLFLOW_TRACKING_USERNAME": "ranker",
            "ADMIN_TOKEN": ADMIN_TOKEN,
        }
        with ranker_server(settings, workers=1, extra_env=env) as url:
            seen = []
            answer = httpx.post(f"{url}/inference", json={"driver_ids": [1001, 1002]})
            assert answer.status_code == 200 and answer.json()["scores"]  # the password works
            seen += [answer.text, httpx.get(f"{url}/model").text, httpx.get(f"{url}/metrics").text]
            reload = httpx.post(
                f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
            )
            seen.append(reload.text)
            proc.terminate()
            proc.wait(5)
            down = httpx.post(f"{url}/inference", json={"driver_ids": [1001]})
            assert down.status_code == 503 and address in down.json()["error"]
            seen.append(down.text)
        seen.append(next(repo.parent.glob("ranker-*.log")).read_text())
    for text in seen:
        for secret in (REDIS_PASSWORD, MLFLOW_PASSWORD, ADMIN_TOKEN):
            assert secret not in text
