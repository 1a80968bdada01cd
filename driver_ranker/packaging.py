"""Packaging: put the MLflow champion into BentoML's model store and build the Bento around it.

This is the modern form of the course service's "runner": there, the service saved its MLflow
model with `bentoml.sklearn.save_model` at import time. Here `make bento` imports the champion
once, at build time, as `driver-ranker:v<version>-<run>`; the Bento carries that model and names
it in BENTO_MODEL_TAG, so an image knows which version it was built with. At start the service
still loads the champion from the registry (see registry.py).
"""

from __future__ import annotations

import argparse
import logging

import bentoml
import yaml
from bentoml.exceptions import NotFound

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.errors import ModelUnavailable
from driver_ranker.registry import FEATURE_SERVICE_TAG, connect, version_for_alias

logger = logging.getLogger(__name__)

BENTOFILE = PROJECT_ROOT / "bentofile.yaml"
BUILD_FILE = PROJECT_ROOT / "artifacts" / "bentofile.build.yaml"
MODEL_TAG_ENV = "BENTO_MODEL_TAG"


def import_champion(settings: Settings) -> bentoml.Model:
    """The champion in BentoML's model store, imported from the registry unless already there."""
    client = connect(settings)
    version = version_for_alias(client, settings.model_name, settings.model_alias)
    if version is None:
        raise ModelUnavailable(
            f"{settings.model_name}@{settings.model_alias} does not exist: run `make train`"
        )
    tag = f"{settings.model_name}:v{version.version}-{version.run_id[:8]}"
    try:
        return bentoml.models.get(tag)
    except NotFound:
        pass
    return bentoml.mlflow.import_model(
        tag,
        f"models:/{settings.model_name}/{version.version}",
        labels={"mlflow_version": str(version.version), "alias": settings.model_alias},
        metadata={
            "registry": settings.mlflow_tracking_uri,
            "run_id": version.run_id,
            FEATURE_SERVICE_TAG: version.tags.get(FEATURE_SERVICE_TAG, ""),
        },
    )


def build(settings: Settings) -> tuple[bentoml.Bento, bentoml.Model]:
    """`bentoml build` of bentofile.yaml, with the champion added to the Bento.

    The build file with the model added is written to artifacts/bentofile.build.yaml, so what was
    built can be read back.
    """
    model = import_champion(settings)
    config = yaml.safe_load(BENTOFILE.read_text())
    config["models"] = [str(model.tag)]
    config["envs"] = [*config.get("envs", []), {"name": MODEL_TAG_ENV, "value": str(model.tag)}]
    config["labels"] = {**config.get("labels", {}), "champion_version": model.info.labels["mlflow_version"]}
    BUILD_FILE.parent.mkdir(parents=True, exist_ok=True)
    BUILD_FILE.write_text(yaml.safe_dump(config, sort_keys=False))
    bento = bentoml.bentos.build_bentofile(str(BUILD_FILE), build_ctx=str(PROJECT_ROOT))
    return bento, model


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        bento, model = build(get_settings())
    except ModelUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"built Bento {bento.tag} carrying model {model.tag} at {bento.path}")
    print(f"Dockerfile: {bento.path}/env/docker/Dockerfile; next: `make containerize`")


if __name__ == "__main__":
    main()
