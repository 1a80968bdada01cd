"""The compose file agrees with the code: what only Docker runs is checked against what the
process-topology tests prove (tests/integration/test_stack.py)."""

import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from driver_ranker.config import PROJECT_ROOT, Settings
from driver_ranker.ops.processes import SERVING_ENV
from driver_ranker.ops.stack import ALLOWED_HOSTS

DEPLOYMENT = PROJECT_ROOT / "deployment"
# Settings the containers may leave to their defaults, and why.
NOT_IN_COMPOSE = {
    "mlflow_artifact_root": "only used with a local SQLite registry, not with a server",
    "bento_model_tag": "unset: `driver-ranker:latest`, in the image the model its Bento carries",
    "batch_chunk_rows": "batch scoring is a job (`make batch`), not part of the service",
}
LONG_RUNNING = {"redis", "postgres", "mlflow", "ranker", "lb", "prometheus", "grafana"}


def dotenv(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


# Compose's interpolation: `$$` is a literal `$`; `${VAR:-default}` takes the default when VAR is
# unset or empty, `${VAR-default}` only when unset.
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's substitution from deployment/.env; a variable without a value or default fails."""
    if isinstance(value, str):

        def lookup(match: re.Match) -> str:
            name, operator, default = match.groups()
            if name is None:
                return "$"
            if operator == ":-" and not env.get(name):
                return default
            if operator == "-" and name not in env:
                return default
            assert name in env, f"${{{name}}} is not set in deployment/.env"
            return env[name]

        return VARIABLE.sub(lookup, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def compose_file(**shell: str | None) -> dict:
    """The compose file as `docker compose` reads it: the shell's variables win over deployment/.env;
    None stands for a line removed from .env."""
    env = dotenv(DEPLOYMENT / ".env") | shell
    raw = yaml.safe_load((DEPLOYMENT / "docker-compose.yml").read_text())
    return interpolate(raw, {k: v for k, v in env.items() if v is not None})


def container_env(services: dict, service: str) -> dict[str, str]:
    """What a container's environment gets: its env_file (read as written: compose does not
    interpolate it, and the shell does not override it), then its `environment`."""
    env: dict[str, str] = {}
    for name in services[service].get("env_file", []):
        env |= dotenv(DEPLOYMENT / name)
    return env | services[service].get("environment", {})


@pytest.fixture(scope="module")
def compose() -> dict:
    return compose_file()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_names() -> dict[str, str]:
    """Each setting's environment variable (pydantic-settings: the field name, upper case)."""
    return {name: name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize("service", ["ranker", "init"])
def test_every_setting_is_set_for_the_ranker_and_the_init_job(services, service):
    environment = container_env(services, service)
    for field, variable in env_names().items():
        if field not in NOT_IN_COMPOSE:
            assert variable in environment, f"{service} does not set {variable}"
    assert set(environment) <= set(env_names().values()), "compose sets a variable the code does not read"
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in environment.items()})
    assert settings.online_store == "redis"
    # Left empty in .env, the secrets and the shadow are off, not empty strings anybody can send.
    assert settings.admin_token is None and settings.api_key is None and settings.shadow_alias is None


def test_names_ports_and_urls_agree(services):
    environment = container_env(services, "ranker")
    redis_host, redis_port = environment["REDIS_CONNECTION_STRING"].split(",")[0].split(":")
    assert redis_host in services and redis_port == "6379"
    mlflow = urlparse(environment["MLFLOW_TRACKING_URI"])
    assert mlflow.hostname in services and mlflow.scheme == "http"
    assert f"--port={mlflow.port}" in services["mlflow"]["command"]
    container_port = int(environment["PORT"])
    assert container_port == Settings.model_fields["port"].default
    assert f"127.0.0.1:{container_port}/readyz" in " ".join(services["ranker"]["healthcheck"]["test"])
    # Prometheus scrapes every replica, found by the service's name, on the port it serves.
    scrape = yaml.safe_load((DEPLOYMENT / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["dns_sd_configs"] == [{"names": ["ranker"], "type": "A", "port": container_port}]
    # Clients reach the rankers through lb only: HAProxy finds them by the service's name on the
    # port they serve, checks the route the ranker's own health check does, and listens where lb
    # publishes; its stats page is where lb's health check looks.
    assert "ports" not in services["ranker"]
    haproxy = (DEPLOYMENT / "haproxy.cfg").read_text()
    assert re.search(
        rf"^    server-template ranker \d+ ranker:{container_port} check resolvers docker ", haproxy, re.M
    )
    assert re.search(r"^    option httpchk GET /readyz$", haproxy, re.M)
    (lb_port,) = [p.rsplit(":", 1)[1] for p in services["lb"]["ports"]]
    assert re.search(rf"^    bind :{lb_port}$", haproxy, re.M)
    (stats,) = re.findall(r"^    bind (127\.0\.0\.1:\d+)$", haproxy, re.M)
    assert f"http://{stats}/healthz" in " ".join(services["lb"]["healthcheck"]["test"])


def test_mlflow_allows_the_host_the_ranker_sends(services):
    host = urlparse(container_env(services, "ranker")["MLFLOW_TRACKING_URI"]).netloc
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
    assert services["lb"]["depends_on"]["ranker"]["condition"] == "service_healthy"
    assert depends["init"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


# Image variables that are not settings of the service, and why.
IMAGE_ONLY_ENVS = {
    "GIT_PYTHON_REFRESH": "the image has no git: MLflow's GitPython stays quiet about it",
    "PYTHONOPTIMIZE": "the image runs `bentoml serve` as make serve does (SERVING_ENV)",
}


def test_the_ranker_image_and_its_build_agree(services):
    bentofile = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())
    assert services["ranker"]["image"] == services["init"]["image"] == "driver-ranker:latest"
    assert bentofile["name"] == "driver-ranker"
    assert {e["name"] for e in bentofile["envs"]} <= set(env_names().values()) | set(IMAGE_ONLY_ENVS)
    image_envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert SERVING_ENV.items() <= image_envs.items()
    # The offline data is init's alone; the Feast registry is PostgreSQL's database of its own, which
    # the postgres image's init script creates: rankers share no volume, so they scale.
    repo = services["ranker"]["environment"]["FEAST_REPO_PATH"]
    assert "volumes" not in services["ranker"]
    assert services["init"]["volumes"] == [f"feast-data:{repo}/data"]
    registry = services["ranker"]["environment"]["FEAST_REGISTRY"]
    assert registry.startswith("postgresql://") and registry.endswith("@postgres:5432/feast")
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    assert "createdb" in (DEPLOYMENT / "postgres-init" / "feast-registry.sh").read_text()
    assert services["init"]["entrypoint"][-2:] == ["driver_ranker.ops.bootstrap", "prepare"]
    # The server is the MLflow the client in the image and the host's tools are.
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    client_pin = re.search(r'"mlflow-skinny==([\d.]+)"', pyproject).group(1)
    host_pin = re.search(r'"mlflow==([\d.]+)"', pyproject).group(1)
    assert services["mlflow"]["build"]["args"]["MLFLOW_VERSION"] == client_pin == host_pin


def published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port, in compose's short syntax."""
    mappings = []
    for port in service.get("ports", []):
        parts = str(port).split(":")
        assert len(parts) == 3, f"{port!r} names no host address: it would listen on every interface"
        mappings.append((parts[0], parts[1], parts[2]))
    return mappings


# The ranker API is published by lb (HAProxy in front of the replicas), under the ranker's names.
BIND = {
    "mlflow": "MLFLOW_BIND",
    "lb": "RANKER_BIND",
    "prometheus": "PROMETHEUS_BIND",
    "grafana": "GRAFANA_BIND",
}


def test_every_published_port_is_loopback_by_default(services):
    # Every published port is opted in here, by name: a new one must say where it listens.
    assert {name for name, service in services.items() if service.get("ports")} == set(BIND)
    assert not {"redis", "postgres"} & {n for n, s in services.items() if s.get("ports")}
    for env in (compose_file(), compose_file(**dict.fromkeys(BIND.values(), None))):
        for name in BIND:
            assert [address for address, _, _ in published(env["services"][name])] == ["127.0.0.1"], name
    env = dotenv(DEPLOYMENT / ".env")
    assert all(env[variable] == "127.0.0.1" for variable in BIND.values())
    # An empty value is the default, not "every interface".
    empty = compose_file(**dict.fromkeys(BIND.values(), ""))["services"]
    assert all(published(empty[name])[0][0] == "127.0.0.1" for name in BIND)


@pytest.mark.parametrize("service", sorted(BIND))
def test_a_port_opens_only_when_its_own_variable_says_so(service):
    services = compose_file(**{BIND[service]: "0.0.0.0"})["services"]
    for name in BIND:
        expected = "0.0.0.0" if name == service else "127.0.0.1"
        assert published(services[name])[0][0] == expected, name
    # Opening MLflow opens a way to run code in the ranker: .env says so beside the switch.
    if service == "mlflow":
        assert "register a version" in comment_above("MLFLOW_BIND")
        assert "code the ranker runs" in comment_above("MLFLOW_BIND")


def comment_above(variable: str) -> str:
    """The comment lines right above `variable=` in deployment/.env, joined."""
    lines = (DEPLOYMENT / ".env").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{variable}="))
    comment = []
    for line in reversed(lines[:index]):
        if not line.startswith("#"):
            break
        comment.insert(0, line.lstrip("# "))
    return " ".join(comment)


def test_published_ports_match_the_containers(services):
    ports = {name: published(services[name])[0][1:] for name in BIND}
    env = dotenv(DEPLOYMENT / ".env")
    assert ports["mlflow"] == (env["MLFLOW_PORT"], "5000")
    assert ports["lb"] == (env["RANKER_PORT"], services["ranker"]["environment"]["PORT"])
    assert ports["prometheus"] == (env["PROMETHEUS_PORT"], "9090")
    assert ports["grafana"] == (env["GRAFANA_PORT"], "3000")
    # Each on a port of its own: Grafana's default (3000) is the ranker API's on the host.
    assert len({host for host, _ in ports.values()}) == len(ports)


def test_grafana_is_provisioned_read_only_from_the_repository(services):
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"]), "pin an exact release"
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in grafana["volumes"])
    assert all(volume.endswith(":ro") for volume in grafana["volumes"]), grafana["volumes"]
    assert set(mounts.values()) == {"/etc/grafana/provisioning", "/etc/grafana/dashboards"}
    host = {target: DEPLOYMENT / source for source, target in mounts.items()}
    assert all(path.is_dir() for path in host.values()), host
    provisioning = host["/etc/grafana/provisioning"]
    # The data source is compose's Prometheus, by service name and the port it listens on.
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlparse(source["url"])
    assert source["type"] == "prometheus" and url.hostname == "prometheus" and url.hostname in services
    assert str(url.port) == published(services["prometheus"])[0][2]
    scrape = yaml.safe_load((DEPLOYMENT / "prometheus" / "prometheus.yml").read_text())["global"]
    assert source["jsonData"]["timeInterval"] == scrape["scrape_interval"]  # what $__rate_interval uses
    # The dashboards' provider reads the mounted folder, which holds the dashboard; the UI cannot edit it.
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "driver-ranker.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    dashboards = host["/etc/grafana/dashboards"]
    assert (dashboards / "driver-ranker.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/etc/grafana/dashboards/") and (dashboards / home.rsplit("/", 1)[1]).is_file()
    # Anonymous visitors view, nobody signs up, and the admin password is .env's (change it there).
    environment = grafana["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == dotenv(DEPLOYMENT / ".env")["GRAFANA_ADMIN_PASSWORD"]
    assert "http://127.0.0.1:3000/api/health" in " ".join(grafana["healthcheck"]["test"])


def test_demo_data_is_off_unless_asked(services):
    assert dotenv(DEPLOYMENT / ".env")["DEMO_DATA"] == "false"
    cases = {"default": compose_file(), "removed from .env": compose_file(DEMO_DATA=None)}
    for case, env in cases.items():
        environment = env["services"]["init"]["environment"]
        assert environment["DEMO_DATA"] == "false", case
        assert Settings(_env_file=None, demo_data=environment["DEMO_DATA"]).demo_data is False, case
    asked = compose_file(DEMO_DATA="true")["services"]["init"]["environment"]["DEMO_DATA"]
    assert Settings(_env_file=None, demo_data=asked).demo_data is True
    assert "never gets synthetic features" in comment_above("DEMO_DATA")


# What the host's tools read: a user's shell exports these for `make train`, `make serve` and MLflow's
# own client; compose must never hand the shell's values to the containers in place of ranker.env's.
HOST_TOOL_VARIABLES = {name.upper() for name in Settings.model_fields} | {
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
}
# ... except the one the README tells users to put in front of `docker compose up`.
FROM_THE_SHELL = {"DEMO_DATA"}


def test_the_shell_cannot_override_what_the_containers_read(services):
    interpolated = set(VARIABLE.findall((DEPLOYMENT / "docker-compose.yml").read_text()))
    named = {name for name, _, _ in interpolated if name}
    assert named & HOST_TOOL_VARIABLES == FROM_THE_SHELL
    # The case: a shell set up for a local registry and Redis, and more.
    shell = {
        "MLFLOW_TRACKING_URI": "sqlite:////home/user/driver-ranker/artifacts/mlflow.db",
        "REDIS_CONNECTION_STRING": "127.0.0.1:6379",
        "FEAST_REPO_PATH": "/home/user/driver-ranker/feature_repo",
        "ONLINE_STORE": "sqlite",
        "WORKERS": "8",
        "PORT": "3001",
        "API_KEY": "the-hosts",
    }
    hostile = compose_file(**shell)["services"]
    for service in ("init", "ranker"):
        assert container_env(hostile, service) == container_env(services, service), service
        assert services[service]["env_file"] == ["ranker.env"]


def test_ranker_env_gives_every_variable_a_value():
    # A bare `NAME` line in an env_file takes the value of the shell that runs compose.
    lines = [line for line in (DEPLOYMENT / "ranker.env").read_text().splitlines() if line and line[0] != "#"]
    assert all(re.fullmatch(r"[A-Z_]+=.*", line) for line in lines), lines
    assert "$" not in "".join(lines)
    assert set(dotenv(DEPLOYMENT / "ranker.env")) <= set(env_names().values())
    # Compose's own settings and the containers' are separate files.
    assert not set(dotenv(DEPLOYMENT / ".env")) & set(dotenv(DEPLOYMENT / "ranker.env"))


def lock_pins(name: str) -> dict[str, str]:
    """A lock file's `name==version` lines (markers and comments dropped), by canonical name."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (PROJECT_ROOT / name).read_text().splitlines():
        line = line.split(";", 1)[0].split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            package, version = line.split("==")
            pins[canonicalize_name(package)] = version
    return pins


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions these requirements need, extras and this Python's markers applied."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = seen.get(name, set())
        if name in seen and set(requirement.extras) <= extras:
            continue
        seen[name] = extras | set(requirement.extras)
        for text in distribution(name).requires or []:
            needed = Requirement(text)
            markers = [{"extra": extra} for extra in ["", *sorted(seen[name])]]
            if needed.marker is None or any(needed.marker.evaluate(m) for m in markers):
                todo.append(needed)
    return set(seen)


def test_the_image_lock_is_what_the_package_needs_and_dev_tools_stay_out():
    import tomllib

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = lock_pins("requirements.lock"), lock_pins("requirements-dev.lock")
    # requirements.lock: pyproject's dependencies and all they need on this Python, nothing else
    # (async-timeout is redis's on Python 3.11.0-3.11.2 only: its marker is false here).
    applicable = {name for name in runtime if name != "async-timeout"}
    assert closure(project["dependencies"]) == applicable
    for pin in project["dependencies"]:
        name, version = pin.split("==")
        assert runtime[name.split("[")[0]] == version, pin
    # requirements-dev.lock: the same file first, then the dev extra and what it needs.
    assert (PROJECT_ROOT / "requirements-dev.lock").read_text().splitlines()[2] == "-r requirements.lock"
    assert not set(runtime) & set(dev)
    assert closure(project["optional-dependencies"]["dev"]) - set(runtime) == set(dev)
    for tool in ("pytest", "ruff", "schemathesis", "pyinstrument", "uv", "mlflow", "psycopg2-binary"):
        assert tool in dev and tool not in runtime, tool


def test_the_image_installs_the_lock_as_it_is_without_a_compiler():
    bentofile = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())
    # The model the Bento carries, declared BentoML's way (make bento makes the champion `latest`).
    assert bentofile["models"] == ["driver-ranker:latest"]
    assert "BENTO_MODEL_TAG" not in {e["name"] for e in bentofile["envs"]}
    assert bentofile["python"] == {"requirements_txt": "requirements.lock", "lock_packages": False}
    # The slim Python image as it is: not BentoML's default Debian setup with build-essential and git.
    assert bentofile["docker"]["base_image"] == "python:3.11-slim"
    template = (PROJECT_ROOT / bentofile["docker"]["dockerfile_template"]).read_text()
    assert "--no-deps" in template and "-r ./env/python/requirements.txt" in template
    assert "apt-get" not in template
    assert f'"uv=={lock_pins("requirements-dev.lock")["uv"]}"' in template
    # No Dockerfile of the ranker's own: the MLflow server's, HAProxy's, and BentoML's template block.
    assert not list(PROJECT_ROOT.glob("*Dockerfile*"))
    assert sorted(p.name for p in DEPLOYMENT.glob("*Dockerfile*")) == [
        "bento.Dockerfile.j2",
        "lb.Dockerfile",
        "mlflow.Dockerfile",
    ]


def test_the_lb_image_is_haproxy_on_the_slim_python_image_with_this_config(services):
    assert services["lb"]["build"] == {"context": ".", "dockerfile": "lb.Dockerfile"}
    lines = [
        line for line in (DEPLOYMENT / "lb.Dockerfile").read_text().splitlines() if not line.startswith("#")
    ]
    # Docker Hub's python:3.11-slim, as the other images (a `# syntax=` first line would pull a frontend).
    assert lines[0] == "FROM python:3.11-slim"
    assert not (DEPLOYMENT / "lb.Dockerfile").read_text().startswith("# syntax")
    text = "\n".join(lines)
    assert "apt-get install -y --no-install-recommends haproxy" in text
    assert "COPY haproxy.cfg /etc/haproxy/haproxy.cfg" in text
    assert '"-f", "/etc/haproxy/haproxy.cfg"' in text
    assert "USER haproxy" in text and "STOPSIGNAL SIGUSR1" in text


def test_haproxy_accepts_its_config_as_compose_and_make_stack_run_it(tmp_path):
    """`haproxy -c` on deployment/haproxy.cfg, and on what `make stack REPLICAS=n` writes from it."""
    from driver_ranker.ops.balancer import haproxy_binary, render_config

    binary = haproxy_binary()  # CI installs it (.ci/run); elsewhere this says how
    local = render_config(3000, 8404, {"ranker1": 3001, "ranker2": 3002})
    (tmp_path / "local.cfg").write_text(local)
    for config in (DEPLOYMENT / "haproxy.cfg", tmp_path / "local.cfg"):
        checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0 and "ALERT" not in checked.stderr, checked.stdout + checked.stderr
        assert "WARNING" not in checked.stderr, checked.stderr
    assert not re.search(r"^resolvers |resolvers docker|127\.0\.0\.11", local, re.M)
    assert re.findall(r"^    server (\S+) (\S+) check$", local, re.M) == [
        ("ranker1", "127.0.0.1:3001"),
        ("ranker2", "127.0.0.1:3002"),
    ]
    assert re.search(r"^    bind 127\.0\.0\.1:3000$", local, re.M)
    # A dead or draining replica's request goes to another one, and a refused one right away.
    for line in (
        "retry-on conn-failure empty-response response-timeout",
        "option redispatch 1",
        "option http-buffer-request",
        "balance leastconn",
    ):
        assert re.search(rf"^    {line}$", local, re.M), line


# Documents that live outside this repository; the project must stand on its own. The patterns are
# written so that this file does not match them. The one outside tool CI calls, the machine's
# Docker engine script (.ci/run), is not a document.
OUTSIDE = re.compile(r"(DESIGN|STYLE|LAYOUT)[.]md|\bseeds[/]|[.][.]/shared(?![/]docker[/]engine[.]sh)")


def test_no_references_outside_the_repository():
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    hits = []
    for name in listed:
        path = PROJECT_ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{name}:{number}: {line.strip()}")
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)
