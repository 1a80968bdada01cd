"""The image `make containerize` builds: exactly requirements.lock's packages, a non-root user, no
compiler, none of the project's tests, data or registries; and what a plain `bentoml build` and
`bentoml containerize` give is the same image."""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from driver_ranker.config import PROJECT_ROOT
from tests.compose.conftest import REPORT, run

LOCK = PROJECT_ROOT / "requirements.lock"
BENTO = "/home/bentoml/bento"


def in_image(image: str, script: str, entrypoint: str = "sh") -> str:
    flag = "-c"
    return run(["docker", "run", "--rm", "--entrypoint", entrypoint, image, flag, script]).stdout


def locked(python_version: str) -> dict[str, str]:
    """requirements.lock's pins whose markers hold on that Python."""
    environment = {"python_full_version": python_version, "python_version": python_version.rsplit(".", 1)[0]}
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("  #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_packages_in_the_image_are_the_locks(image):
    listed = json.loads(
        in_image(
            image,
            "import importlib.metadata as m, json, platform; print(json.dumps({'python': "
            "platform.python_version(), 'packages': [[d.metadata['Name'], d.version] for d in m.distributions()]}))",
            entrypoint="python",
        )
    )
    installed = {canonicalize_name(name): version for name, version in listed["packages"]}
    expected = locked(listed["python"])
    assert installed == expected, {
        "not in the lock": sorted(set(installed.items()) - set(expected.items())),
        "missing": sorted(set(expected.items()) - set(installed.items())),
    }
    # The versions CI tests: the host's own venv has every pin that applies to its Python.
    host = locked(platform.python_version())
    from importlib.metadata import version

    assert {name: version(name) for name in host} == host
    REPORT["packages in the image"] = f"{len(installed)}, all as requirements.lock pins them"


def test_the_image_runs_as_a_non_root_user_with_no_compiler_tests_or_data(image):
    config = json.loads(run(["docker", "image", "inspect", image]).stdout)[0]["Config"]
    assert config["User"] == "bentoml"
    out = in_image(
        image,
        "id -u; for tool in gcc cc c++ g++ make git uv; do command -v $tool || true; done; echo ---; "
        f"find {BENTO} \\( -name tests -o -name 'test_*.py' -o -name conftest.py \\) -print; "
        "find /app/.venv -type d -name tests -print; "
        f"find {BENTO} \\( -name '*.parquet' -o -name '*.db' -o -name '*.csv' -o -name 'mlruns' \\) -print; "
        f"ls -A {BENTO}/src/feature_repo/data",
    )
    uid, rest = out.split("\n", 1)
    tools, found = rest.split("---\n")
    assert int(uid) != 0
    assert tools.split() == [], f"found in the image: {tools.split()}"
    assert found.split() == [".gitkeep"], f"tests, data or registries in the image: {found.split()}"
    size = int(run(["docker", "image", "inspect", image, "--format", "{{.Size}}"]).stdout)
    assert size <= 1_000_000_000, f"{size / 1e6:.0f} MB"


def bento_files(image: str) -> list[str]:
    """Checksums of the Bento's source and model in the image."""
    return in_image(image, f"cd {BENTO} && find src models -type f | sort | xargs sha256sum").splitlines()


def test_a_plain_bentoml_build_and_containerize_give_the_same_image(image, host_shell):
    bentoml = str(PROJECT_ROOT / ".venv" / "bin" / "bentoml")
    built = run([bentoml, "build", "-o", "tag"], env=host_shell.env)
    (tag,) = [line.split("__tag__:", 1)[1] for line in built.stdout.splitlines() if "__tag__:" in line]
    plain = f"driver-ranker:plain-{tag.split(':')[1]}"
    # From the temporary folder, as `make containerize` does: BentoML 1.4.39 refuses a Bento's
    # dockerfile_template under any other working directory (bentoml/BentoML#5566).
    run([bentoml, "containerize", tag, "-t", plain], env=host_shell.env, cwd=Path(tempfile.gettempdir()))
    try:
        layers = [
            json.loads(
                run(["docker", "image", "inspect", name, "--format", "{{json .RootFS.Layers}}"]).stdout
            )
            for name in (image, plain)
        ]
        # Everything up to the installed packages is the same layer; after it come the Bento's own
        # files (its bento.yaml names another build), compared by content.
        assert len(layers[0]) == len(layers[1])
        assert layers[0][:-2] == layers[1][:-2]
        assert bento_files(image) == bento_files(plain), (
            "the Bentos differ (a source file edited between the two builds would do it)"
        )
    finally:
        run(["docker", "rmi", plain])


@pytest.fixture(scope="module", autouse=True)
def _layers(image):
    """The image's layers that hold bytes, bottom up, for the report."""
    history = run(["docker", "history", "--no-trunc", image, "--format", "{{.Size}}\t{{.CreatedBy}}"]).stdout
    rows = [line.split("\t", 1) for line in reversed(history.splitlines()) if not line.startswith("0B")]
    # A RUN's build arguments come first ("RUN |12 BENTO_USER=... /bin/sh -c ..."): the command is after.
    REPORT["layers"] = "".join(
        f"\n  {size:>8}  {created.rpartition('/bin/sh -c ')[2].strip()[:90] or '(base image)'}"
        for size, created in rows
    )
