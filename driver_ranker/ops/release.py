"""Release commands on the registry's aliases (`make promote`, `make rollback`, `make canary`).

Serving follows the aliases by itself (lifecycle.py): moving one is the whole release.
"""

from __future__ import annotations

import argparse

from mlflow import MlflowClient

from driver_ranker.config import Settings, get_settings
from driver_ranker.model.registry import connect, version_for_alias

PREVIOUS_ALIAS = "previous"


def promote(client: MlflowClient, settings: Settings, version: str) -> str:
    """Moves the champion alias to `version`, keeping the one it leaves as `previous`."""
    client.get_model_version(settings.model_name, version)  # fails on a version that does not exist
    current = version_for_alias(client, settings.model_name, settings.model_alias)
    if current is not None and str(current.version) == str(version):
        return f"{settings.model_name}@{settings.model_alias} is already version {version}"
    if current is not None:
        client.set_registered_model_alias(settings.model_name, PREVIOUS_ALIAS, current.version)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    before = f" (previous: {current.version})" if current is not None else ""
    return f"{settings.model_name}@{settings.model_alias} -> version {version}{before}"


def rollback(client: MlflowClient, settings: Settings) -> str:
    """Moves the champion back to `previous`; the version it leaves becomes `previous`."""
    previous = version_for_alias(client, settings.model_name, PREVIOUS_ALIAS)
    if previous is None:
        raise SystemExit(f"error: {settings.model_name} has no {PREVIOUS_ALIAS!r} alias to roll back to")
    return promote(client, settings, str(previous.version))


def set_canary(client: MlflowClient, settings: Settings, version: str) -> str:
    client.get_model_version(settings.model_name, version)
    client.set_registered_model_alias(settings.model_name, settings.canary_alias, version)
    return (
        f"{settings.model_name}@{settings.canary_alias} -> version {version}; it takes "
        f"{settings.canary_percent}% of requests where CANARY_PERCENT is set"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("promote").add_argument("version")
    commands.add_parser("rollback")
    commands.add_parser("canary").add_argument("version")
    args = parser.parse_args(argv)
    settings = get_settings()
    client = connect(settings)
    if args.command == "promote":
        print(promote(client, settings, args.version))
    elif args.command == "rollback":
        print(rollback(client, settings))
    else:
        print(set_canary(client, settings, args.version))


if __name__ == "__main__":
    main()
