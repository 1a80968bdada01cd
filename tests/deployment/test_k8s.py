"""The Kubernetes manifests (deployment/k8s) agree with the code: every overlay rendered with
`kubectl kustomize`, as `kubectl apply -k` would send it, and checked against Settings, the
service's routes and port, the Bento's image and compose's init job. Rendering only: no cluster.

The containers get the settings compose gives its own (ranker.env and `environment:`), and
test_compose.py holds compose to every setting the service needs."""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import types
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from driver_ranker.config import PROJECT_ROOT, Settings
from tests.deployment.test_compose import compose_file, container_env, dotenv

K8S = PROJECT_ROOT / "deployment" / "k8s"
OVERLAYS = sorted(
    path.name for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").exists()
)
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: the manifests are rendered with `kubectl kustomize`"
)

ENV_NAMES = {name.upper() for name in Settings.model_fields}
# Not Settings fields: variables MLflow's client reads itself (its basic auth), kept in the Secret.
MLFLOW_CLIENT = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"}
# Secret although not a SecretStr: Feast's format carries the Redis password inside the string.
ALSO_SECRET = {"REDIS_CONNECTION_STRING"}
# Feast's Redis connection string: `host:port` parts, then `option=value` parts.
NODE = re.compile(r"[A-Za-z0-9.-]+:\d+")
FEAST_REDIS_OPTIONS = {"password", "ssl", "db", "skip_full_coverage_check"}


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


class Manifests:
    """One overlay's rendered objects, and the parts of them the tests look at."""

    def __init__(self, overlay: str) -> None:
        self.overlay = overlay
        self.docs = render(overlay)

    def all(self, kind: str) -> list[dict]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str) -> dict:
        (doc,) = self.all(kind)
        return doc

    @property
    def deployment(self) -> dict:
        return self.one("Deployment")

    @property
    def pod(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def ranker(self) -> dict:
        (container,) = self.pod["containers"]
        return container

    @property
    def job_pod(self) -> dict:
        return self.one("Job")["spec"]["template"]["spec"]

    @property
    def init(self) -> dict:
        (container,) = self.job_pod["containers"]
        return container

    @property
    def config(self) -> dict[str, str]:
        return self.one("ConfigMap")["data"]

    @property
    def secret(self) -> dict[str, str]:
        doc = self.one("Secret")
        values = {key: base64.b64decode(value).decode() for key, value in doc.get("data", {}).items()}
        return values | doc.get("stringData", {})

    @property
    def env(self) -> dict[str, str]:
        """What the containers' environment gets from the ConfigMap and the Secret."""
        return self.config | self.secret

    def settings(self) -> Settings:
        env = {key.lower(): value for key, value in self.env.items() if key in ENV_NAMES}
        return Settings(_env_file=None, **env)

    def container_port(self, port: int | str) -> int:
        """A port of the ranker container, by number or by name."""
        for entry in self.ranker["ports"]:
            if port in (entry["containerPort"], entry.get("name")):
                return entry["containerPort"]
        raise AssertionError(f"the ranker container has no port {port!r}")


@pytest.fixture(scope="module", params=OVERLAYS)
def k8s(request) -> Manifests:
    return Manifests(request.param)


@pytest.fixture(scope="module")
def compose_init() -> dict:
    return compose_file()["services"]["init"]


def test_the_overlays_are_there():
    assert {"dev", "production"} <= set(OVERLAYS)
    assert (K8S / "base" / "kustomization.yaml").exists()


# Settings


def test_every_key_is_read_by_the_code(k8s):
    config, secret = set(k8s.config), set(k8s.secret)
    assert config <= ENV_NAMES, f"the ConfigMap sets what the code does not read: {config - ENV_NAMES}"
    assert secret <= ENV_NAMES | MLFLOW_CLIENT, f"the Secret sets what nobody reads: {secret - ENV_NAMES}"
    assert not config & secret, "a key in both: which one wins depends on envFrom's order"
    # MLflow's own names for them, as its client reads them.
    import mlflow.environment_variables as mlflow_env

    assert {getattr(mlflow_env, name).name for name in secret & MLFLOW_CLIENT} == secret & MLFLOW_CLIENT
    k8s.settings()  # every value parses as the service will parse it


def test_ranker_env_and_compose_environment_are_all_carried(k8s):
    compose_ranker = container_env(compose_file()["services"], "ranker")
    assert set(dotenv(PROJECT_ROOT / "deployment" / "ranker.env")) <= set(k8s.env)
    missing, extra = set(compose_ranker) - set(k8s.env), set(k8s.env) - set(compose_ranker) - MLFLOW_CLIENT
    assert not missing and not extra, f"compose's containers get {missing}, these do not; {extra} the reverse"
    # The image's own paths and port, whatever the overlay.
    for key in ("FEAST_REPO_PATH", "PORT", "ONLINE_STORE"):
        assert k8s.env[key] == compose_ranker[key], key
    assert k8s.settings().demo_data is False, "DEMO_DATA would write synthetic data into real stores"


def test_secrets_are_in_the_secret(k8s):
    secret_fields = {
        name.upper()
        for name, field in Settings.model_fields.items()
        if SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
    }
    assert {"API_KEY", "ADMIN_TOKEN"} <= secret_fields
    for key in secret_fields | ALSO_SECRET:
        assert key in k8s.secret and key not in k8s.config, key


def test_both_containers_read_the_configmap_and_the_secret(k8s):
    names = [k8s.one("ConfigMap")["metadata"]["name"], k8s.one("Secret")["metadata"]["name"]]
    for container in (k8s.ranker, k8s.init):
        sources = container["envFrom"]
        assert [s.get("configMapRef", s.get("secretRef"))["name"] for s in sources] == names
        assert "env" not in container, "a setting outside the ConfigMap and the Secret"


# The service: routes, port, workers, image


@functools.cache
def service_under(env: tuple[tuple[str, str], ...]) -> dict:
    """service.py imported with an overlay's environment: its routes, port and workers."""
    script = (
        "import json, service; s = service.DriverRanker; print(json.dumps({'paths': "
        "sorted(s.openapi_spec.asdict()['paths']), 'port': s.config['http']['port'], 'workers': s.config['workers']}))"
    )
    base = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR") if key in os.environ}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=base | dict(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_probes_are_routes_the_service_has(k8s):
    routes = service_under(tuple(sorted(k8s.env.items())))["paths"]
    probes = {
        kind: k8s.ranker[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/livez"
    annotations = k8s.deployment["spec"]["template"]["metadata"]["annotations"]
    for path in [probe["path"] for probe in probes.values()] + [annotations["prometheus.io/path"]]:
        assert path in routes, f"{path} is not a route of service.py"
    # Compose's healthcheck gives the ranker 60 s before it counts; the startup probe no less.
    startup = k8s.ranker["startupProbe"]
    window = int(compose_file()["services"]["ranker"]["healthcheck"]["start_period"].rstrip("s"))
    assert startup["periodSeconds"] * startup["failureThreshold"] >= window


def test_every_port_is_the_port_setting(k8s):
    port = int(k8s.env["PORT"])
    assert service_under(tuple(sorted(k8s.env.items())))["port"] == port, "service.py listens elsewhere"
    assert [entry["containerPort"] for entry in k8s.ranker["ports"]] == [port]
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert k8s.container_port(k8s.ranker[kind]["httpGet"]["port"]) == port, kind
    (service_port,) = ranker_service(k8s)["spec"]["ports"]
    assert k8s.container_port(service_port["targetPort"]) == port
    annotations = k8s.deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port


def ranker_service(k8s: Manifests) -> dict:
    """The ranker's Service (the others are the stores' ExternalName aliases)."""
    (service,) = [s for s in k8s.all("Service") if s["spec"].get("type", "ClusterIP") != "ExternalName"]
    return service


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_workers_are_the_cpu_limit(k8s):
    limit = cpus(str(k8s.ranker["resources"]["limits"]["cpu"]))
    assert int(k8s.env["WORKERS"]) == max(1, math.floor(limit))
    # ... and service.py hands WORKERS to BentoML.
    assert service_under(tuple(sorted(k8s.env.items())))["workers"] == int(k8s.env["WORKERS"])


def test_every_container_has_requests_and_limits(k8s):
    containers = k8s.pod["containers"] + k8s.pod.get("initContainers", []) + k8s.job_pod["containers"]
    for container in containers:
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            assert resource in resources["requests"] and resource in resources["limits"], container["name"]
        assert cpus(str(resources["requests"]["cpu"])) <= cpus(str(resources["limits"]["cpu"]))


def test_the_image_is_the_bentos(k8s):
    bento = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())["name"]
    built = re.search(r"bentoml containerize \S+ -t (\S+)", (PROJECT_ROOT / "Makefile").read_text()).group(1)
    assert built.split(":")[0] == bento
    containers = k8s.pod["containers"] + k8s.pod.get("initContainers", []) + k8s.job_pod["containers"]
    images = {container["image"] for container in containers}
    assert len(images) == 1, images
    (image,) = images
    repository, _, tag = image.rpartition(":")
    assert repository.rsplit("/", 1)[-1] == bento
    if k8s.overlay == "dev":
        assert image == built  # what `make containerize` tags, loaded onto the node
    else:
        assert "/" in repository and tag != "latest", "a registry's image under a tag of its own"
    assert all(container["imagePullPolicy"] == "IfNotPresent" for container in containers)


# Lifecycle: shutdown, replicas, disruptions


def test_terminating_pods_drain(k8s):
    command = k8s.ranker["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    assert pause >= 5, "endpoints need a few seconds to drop the pod"
    # The pause, then the longest a request in progress may still run.
    assert k8s.pod["terminationGracePeriodSeconds"] >= pause + float(k8s.env["REQUEST_TIMEOUT_S"])
    assert k8s.deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def min_replicas(k8s: Manifests) -> int:
    autoscalers = k8s.all("HorizontalPodAutoscaler")
    if autoscalers:
        return autoscalers[0]["spec"]["minReplicas"]
    return k8s.deployment["spec"].get("replicas", 1)


def test_replicas_and_autoscaler(k8s):
    for hpa in k8s.all("HorizontalPodAutoscaler"):
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", k8s.deployment["metadata"]["name"])
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # The autoscaler owns the count: a `replicas` here would be put back on every apply.
        assert "replicas" not in k8s.deployment["spec"]
        # A CPU percentage is of the request: without one the autoscaler has nothing to compute.
        assert "cpu" in k8s.ranker["resources"]["requests"]
    expected = {"dev": lambda n: n == 1, "production": lambda n: n >= 3}
    assert expected.get(k8s.overlay, lambda n: n >= 1)(min_replicas(k8s)), min_replicas(k8s)
    if k8s.overlay == "production":
        assert k8s.one("HorizontalPodAutoscaler")["spec"]["maxReplicas"] > min_replicas(k8s)


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is checked here"
    return selector["matchLabels"].items() <= labels.items()


def test_the_disruption_budget_covers_the_ranker_only(k8s):
    (pdb,) = k8s.all("PodDisruptionBudget")
    ranker_labels = k8s.deployment["spec"]["template"]["metadata"]["labels"]
    job_labels = k8s.one("Job")["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"], ranker_labels) and not selects(
        pdb["spec"]["selector"], job_labels
    )
    # A number that still lets a one-pod deployment be drained.
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < min_replicas(k8s)
    assert selects(k8s.deployment["spec"]["selector"], ranker_labels)
    service = ranker_service(k8s)["spec"]["selector"]
    assert service.items() <= ranker_labels.items() and not service.items() <= job_labels.items()


# The init job and the Feast volume


def test_the_job_runs_what_compose_init_runs(k8s, compose_init):
    assert k8s.init["command"] == compose_init["entrypoint"]
    assert k8s.init["workingDir"] == compose_init["working_dir"]
    assert k8s.job_pod["restartPolicy"] in ("Never", "OnFailure")
    # Compose's feast-data volume at the same place: the offline data init materializes.
    (compose_mount,) = compose_init["volumes"]
    path = compose_mount.split(":")[1]
    assert path == f"{k8s.env['FEAST_REPO_PATH']}/data"
    (job_mount,) = k8s.init["volumeMounts"]
    assert job_mount["mountPath"] == path and not job_mount.get("readOnly")
    (volume,) = k8s.job_pod["volumes"]
    assert (
        volume["persistentVolumeClaim"]["claimName"] == k8s.one("PersistentVolumeClaim")["metadata"]["name"]
    )


def test_ranker_pods_need_no_volume(k8s):
    """Feast's SQL registry (FEAST_REGISTRY) is what lets any number of ranker pods, on any nodes,
    share the definitions: a file registry would need the job's volume on every node."""
    registry = k8s.settings().feast_registry
    assert registry is not None and urlsplit(registry.get_secret_value()).scheme.startswith("postgresql")
    for container in [k8s.ranker, *k8s.pod["initContainers"]]:
        assert "volumeMounts" not in container, container["name"]
    assert "volumes" not in k8s.pod
    assert k8s.one("PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]  # the job's alone


class Stuck(BaseException):
    """Not an Exception: the script under test catches those and would wait forever."""


def test_ranker_pods_wait_for_the_definitions_the_job_applies(k8s, monkeypatch):
    (wait,) = k8s.pod["initContainers"]
    assert wait["command"][:2] == ["python", "-c"]
    assert wait["envFrom"] == k8s.ranker["envFrom"] and wait["workingDir"] == k8s.init["workingDir"]
    assert (
        "def open_store(settings: Settings, offline: bool = True)"
        in (PROJECT_ROOT / "driver_ranker/features/store.py").read_text()
    )
    # The script, run against a registry that fails, then is empty, then holds the definitions.
    answers = [ConnectionRefusedError("postgres:5432"), [], [], ["driver_ranker_v1"]]
    calls, sleeps = [], []

    class Store:
        def list_feature_services(self):
            calls.append(None)
            answer = answers[min(len(calls), len(answers)) - 1]
            if isinstance(answer, Exception):
                raise answer
            return answer

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) > 2 * len(answers):
            raise Stuck("still waiting once the definitions are there")

    store_module = types.ModuleType("driver_ranker.features.store")
    store_module.open_store = lambda settings, offline=True: Store()
    monkeypatch.setitem(sys.modules, "driver_ranker.features.store", store_module)
    monkeypatch.setattr(time, "sleep", sleep)
    exec(compile(wait["command"][2], "wait-for-feast-definitions", "exec"), {})
    assert len(calls) == len(answers) and len(sleeps) == len(answers) - 1


# The stores: where they are, and who may reach them


def redis_nodes(connection_string: str) -> list[tuple[str, int]]:
    """The nodes of a Feast Redis connection string; its other parts must be Feast's options."""
    nodes = []
    for part in connection_string.split(","):
        if "=" in part:
            assert part.split("=", 1)[0] in FEAST_REDIS_OPTIONS, part
        else:
            assert NODE.fullmatch(part), f"{part!r} is not host:port"
            host, port = part.rsplit(":", 1)
            nodes.append((host, int(port)))
    return nodes


def mlflow_address(uri: str) -> tuple[str, int]:
    parts = urlsplit(uri)
    assert parts.scheme in ("http", "https"), "the pods reach MLflow's server, not a database"
    return parts.hostname, parts.port or {"http": 80, "https": 443}[parts.scheme]


def postgres_address(settings: Settings) -> tuple[str, int]:
    parts = urlsplit(settings.feast_registry.get_secret_value())
    return parts.hostname, parts.port or 5432


def test_the_stores_are_external_and_named(k8s):
    settings = k8s.settings()
    aliases = {
        s["metadata"]["name"]: s for s in k8s.all("Service") if s["spec"].get("type") == "ExternalName"
    }
    nodes = redis_nodes(settings.redis_connection_string)
    assert nodes
    mlflow_host, _ = mlflow_address(settings.mlflow_tracking_uri)
    postgres_host, _ = postgres_address(settings)
    for host in [host for host, _ in nodes] + [mlflow_host, postgres_host]:
        # A short name is a Service of this namespace, an alias of the external host; else a full name.
        assert host in aliases or "." in host, f"{host} names nothing"
    if settings.redis_type == "redis_cluster":
        # A cluster client connects to the addresses the nodes announce: an alias cannot stand for it.
        assert not {host for host, _ in nodes} & set(aliases)
    # The stores run elsewhere: no pod of these manifests is Redis, PostgreSQL or MLflow.
    assert {doc["kind"] for doc in k8s.docs} & {"StatefulSet", "DaemonSet"} == set()
    assert len(k8s.all("Deployment")) == 1


def test_production_uses_a_redis_cluster_and_guards_the_api():
    k8s = Manifests("production")
    settings = k8s.settings()
    assert settings.redis_type == "redis_cluster"
    assert len(redis_nodes(settings.redis_connection_string)) >= 2
    assert settings.api_key is not None and settings.admin_token is not None
    assert urlsplit(settings.mlflow_tracking_uri).scheme == "https"
    assert "sslmode=require" in settings.feast_registry.get_secret_value()


def allowed_egress(k8s: Manifests, labels: dict) -> set[tuple[str, int | str]]:
    """(protocol, port) the NetworkPolicies let pods with these labels reach."""
    allowed = set()
    for policy in k8s.all("NetworkPolicy"):
        if selects(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("egress", []):
                allowed |= {(port.get("protocol", "TCP"), port["port"]) for port in rule["ports"]}
    return allowed


def test_the_network_policies_select_the_ranker_and_the_job(k8s):
    policies = k8s.all("NetworkPolicy")
    assert policies
    ranker_labels = k8s.deployment["spec"]["template"]["metadata"]["labels"]
    job_labels = k8s.one("Job")["spec"]["template"]["metadata"]["labels"]
    for policy in policies:
        selector = policy["spec"]["podSelector"]
        assert selector.get("matchLabels"), "a policy for every pod of the namespace"
        assert selects(selector, ranker_labels) and selects(selector, job_labels), policy["metadata"]["name"]
        assert "Egress" in policy["spec"]["policyTypes"]
    # Both reach DNS and the stores' ports as the settings name them: every Redis node, PostgreSQL
    # (Feast's registry), MLflow.
    settings = k8s.settings()
    needed = {("UDP", 53), ("TCP", 53)}
    needed |= {("TCP", port) for _, port in redis_nodes(settings.redis_connection_string)}
    needed |= {
        ("TCP", postgres_address(settings)[1]),
        ("TCP", mlflow_address(settings.mlflow_tracking_uri)[1]),
    }
    for labels in (ranker_labels, job_labels):
        allowed = allowed_egress(k8s, labels)
        assert allowed == needed, (
            f"not allowed: {needed - allowed}; allowed beyond the stores: {allowed - needed}"
        )
    # Clients may reach the ranker's port.
    ingress = [
        port["port"]
        for policy in policies
        if "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", [])
        for port in rule["ports"]
    ]
    assert int(k8s.env["PORT"]) in {k8s.container_port(port) for port in ingress}


# make k8s


def test_make_k8s_prints_each_overlay():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {key: value for key, value in os.environ.items() if key != "OVERLAY"}

    def make_k8s(*args: str) -> tuple[dict, ...]:
        done = subprocess.run(
            ["make", "-s", "--no-print-directory", "k8s", *args],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)  # YAML only: pipe it to kubectl

    for overlay in OVERLAYS:
        assert make_k8s(f"OVERLAY={overlay}") == render(overlay)
    assert make_k8s() == render("dev")
