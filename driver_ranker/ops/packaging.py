"""Packaging: put the MLflow champion into BentoML's model store and build the Bento around it.

This is the modern form of the course service's "runner": there, the service saved its MLflow
model with `bentoml.sklearn.save_model` at import time. Here `make bento` imports the champion
once, at build time, as `driver-ranker:v<version>-<run>` and makes it the store's latest
`driver-ranker`; bentofile.yaml declares `models: [driver-ranker:latest]`, so `bentoml build`
(this module's, or a plain one) puts that model in the Bento, and the image carries it. At start
the service still loads the champion from the registry; the Bento's model is what it serves while
the registry is away (`driver-ranker:latest` in the Bento's own model store, serving/lifecycle.py).
"""

from __future__ import annotations

import argparse
import logging

import bentoml
import yaml
from bentoml.exceptions import NotFound

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.errors import ModelUnavailable
from driver_ranker.model.registry import FEATURE_SERVICE_TAG, connect, version_for_alias

logger = logging.getLogger(__name__)

BENTOFILE = PROJECT_ROOT / "bentofile.yaml"


def bento_model_name() -> str:
    """The model name bentofile.yaml's `models:` declares (`<name>:latest`)."""
    (spec,) = yaml.safe_load(BENTOFILE.read_text())["models"]
    tag = spec if isinstance(spec, str) else spec["tag"]
    name, _, version = tag.partition(":")
    if version not in ("", "latest"):
        raise ValueError(f"bentofile.yaml's models: names {tag}; it must name <name>:latest")
    return name


def import_champion(settings: Settings) -> bentoml.Model:
    """The champion in BentoML's model store, imported from the registry unless already there, and
    the store's latest model of its name (what bentofile.yaml's `models:` takes)."""
    name = bento_model_name()
    if name != settings.model_name:
        raise ValueError(
            f"bentofile.yaml's models: names {name}, and MODEL_NAME is {settings.model_name}: "
            "the Bento would carry another model than the one served"
        )
    client = connect(settings)
    version = version_for_alias(client, settings.model_name, settings.model_alias)
    if version is None:
        raise ModelUnavailable(
            f"{settings.model_name}@{settings.model_alias} does not exist: run `make train`"
        )
    tag = f"{name}:v{version.version}-{version.run_id[:8]}"
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        pass
    else:
        if bentoml.models.get(f"{name}:latest").tag == model.tag:
            return model
        # An older import (the champion rolled back, say): imported again, it is the latest.
        bentoml.models.delete(tag)
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
    """The champion imported, then `bentoml build` of bentofile.yaml as it is."""
    model = import_champion(settings)
    bento = bentoml.bentos.build_bentofile(str(BENTOFILE), build_ctx=str(PROJECT_ROOT))
    carried = [str(m.tag) for m in bento.info.models]
    if carried != [str(model.tag)]:
        raise RuntimeError(f"the Bento {bento.tag} carries {carried}, not the champion {model.tag}")
    return bento, model


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        bento, model = build(get_settings())
    except (ModelUnavailable, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"built Bento {bento.tag} carrying model {model.tag} at {bento.path}")
    print(f"Dockerfile: {bento.path}/env/docker/Dockerfile; next: `make containerize`")


if __name__ == "__main__":
    main()
