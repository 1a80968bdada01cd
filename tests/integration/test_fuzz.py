"""schemathesis against the service's own OpenAPI document, on a running server with API_KEY and
ADMIN_TOKEN set: every phase (examples, coverage, fuzzing, stateful) and every check, on every
operation (BentoML's probes and /metrics, /inference, and the mounted /feedback, /model and
/admin/reload).
Whatever a client sends, no 5xx, and every answer is one the document describes.

Run through schemathesis' own command line, which is what runs all phases; its JSON report gives
the verdict and the number of cases, its HAR file every request and answer. FUZZ_EXAMPLES (cases
per operation and phase) scales it: 500 here gives about 1,100 cases; `make fuzz` runs more.
No check is excluded. The stateful phase follows the link schemathesis infers from /inference's
`request_id` to /feedback's, so outcomes of real answers are posted too.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.stack import ranker_server

API_KEY, ADMIN_TOKEN = "fuzz-api-key", "fuzz-admin-token"
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))
PATHS = ["/inference", "/feedback", "/model", "/admin/reload", "/livez", "/healthz", "/readyz", "/metrics"]
# A body over MAX_BODY_BYTES is refused with 413 (documented) before it is parsed, whether or not
# it follows the schema: a list of 251 events, or 250 valid ones with large extra fields, can be
# that long. schemathesis' defaults count 413 neither as a rejection nor as an acceptance; these
# are its defaults with 413 added (and without 5xx, which the service never answers).
REJECTIONS = ", ".join(f'"{s}"' for s in (400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429))
ACCEPTANCES = ", ".join(f'"{s}"' for s in ("2xx", "3xx", 401, 403, 404, 409, 413, 429))
# The credentials of each security scheme the document declares, and the checks' settings
# (schemathesis' config file).
AUTH = f"""
[auth.openapi.ApiKey]
api_key = "{API_KEY}"
[auth.openapi.ApiKeyBearer]
bearer = "{API_KEY}"
[auth.openapi.AdminToken]
bearer = "{ADMIN_TOKEN}"
[checks.negative_data_rejection]
expected-statuses = [{REJECTIONS}]
[checks.positive_data_acceptance]
expected-statuses = [{ACCEPTANCES}]
"""


@pytest.fixture(scope="module")
def guarded_url(feast_settings, champion) -> Iterator[str]:
    """The service with both secrets set, so that the fuzzing reaches the 401s and the admin route."""
    with ranker_server(
        feast_settings, workers=1, extra_env={"API_KEY": API_KEY, "ADMIN_TOKEN": ADMIN_TOKEN}
    ) as url:
        yield url


def schemathesis_run(url: str, folder: Path) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    """`st run` with every phase and check; its output, its JSON report and its HAR entries."""
    config = folder / "schemathesis.toml"
    config.write_text(AUTH)
    seed = ["--seed", os.environ["FUZZ_SEED"]] if os.environ.get("FUZZ_SEED") else []
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/docs.json",
        "--phases", "examples,coverage,fuzzing,stateful", "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES), *seed, "--generation-database", "none", "--report", "json,har",
        "--report-json-path", str(folder / "report.json"), "--report-har-path", str(folder / "requests.har"),
        "--no-color",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=folder)
    report = json.loads((folder / "report.json").read_text())
    entries = json.loads((folder / "requests.har").read_text())["log"]["entries"]
    return done, report, entries


def test_every_phase_and_check_on_every_operation_finds_nothing(guarded_url, tmp_path):
    done, report, entries = schemathesis_run(guarded_url, tmp_path)
    answers = Counter(
        (e["request"]["method"], urlsplit(e["request"]["url"]).path, e["response"]["status"]) for e in entries
    )
    statuses = Counter(status for (_, _, status) in answers.elements())
    posts = {
        path: {
            status: n for (method, at, status), n in sorted(answers.items()) if (method, at) == ("POST", path)
        }
        for path in ("/inference", "/feedback", "/admin/reload")
    }
    print(
        f"schemathesis: {report['test_cases']['generated']} cases in {report['running_time']:.1f} s; "
        f"statuses {dict(sorted(statuses.items()))}; POST {posts}\n{done.stdout[-1200:]}"
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert report["failures"] == [] and report["errors"] == [] and report["stop_reason"] == "completed"
    assert report["operations"]["tested"] == len(PATHS) and report["operations"]["errored"] == 0
    phases = {name: phase["status"] for name, phase in report["phases"].items()}
    # Stateful: schemathesis links /inference's request_id to /feedback's and posts outcomes of answers.
    assert phases == {
        "examples": "success",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "success",
    }
    assert report["test_cases"]["generated"] >= 2 * MAX_EXAMPLES  # CI: at least 1,000
    assert not [answer for answer in answers if answer[2] >= 500]
    # Each kind of answer was reached, not only refusals.
    for reached in [("POST", "/inference", 200), ("POST", "/inference", 400), ("POST", "/inference", 401),
                    ("POST", "/feedback", 200), ("POST", "/feedback", 400), ("POST", "/feedback", 404),
                    ("POST", "/admin/reload", 200), ("POST", "/admin/reload", 401), ("GET", "/model", 200)]:  # fmt: skip
        assert answers[reached] > 0, reached
    assert {path for _, path, _ in answers} >= set(PATHS)


def test_no_method_content_type_or_body_gives_a_server_error(guarded_url):
    """Beyond schemathesis' own probes: each route, each method, odd Content-Types and bodies."""
    content_types = [
        None, "application/json", "application/json; charset=utf-8", "text/plain", "multipart/form-data",
        "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
        "application/vnd.bentoml+pickle", "application/octet-stream", "image/png", "garbage;;=",
    ]  # fmt: skip
    bodies = [b'{"driver_ids": [1001]}', b"--x\r\n\r\n\x00\xff", b""]
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    statuses: Counter = Counter()
    with httpx.Client(base_url=guarded_url, timeout=10, headers={"X-API-Key": API_KEY}) as http:
        for path, method, content_type, body in itertools.product(PATHS, methods, content_types, bodies):
            headers = {"content-type": content_type} if content_type else {}
            response = http.request(method, path, content=body, headers=headers)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (path, method, content_type, body, response.text)
            json_answer = path in ("/inference", "/feedback") and method == "POST"
            if json_answer and content_type and not content_type.startswith("application/json"):
                assert (
                    response.status_code == 415
                    and "Content-Type: application/json" in response.json()["error"]
                )
    assert statuses[415] and statuses[405] and statuses[200] and statuses[400], statuses
