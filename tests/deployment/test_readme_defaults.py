"""The figures README.md gives as defaults are the code's: its Configuration table against Settings,
the settings it names in prose with a value, and the few constants it quotes."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

from driver_ranker.config import PROJECT_ROOT, Settings

README = (PROJECT_ROOT / "README.md").read_text()
# What the table writes for a setting without a fixed default.
UNSET, CORES = "unset", "number of cores"
# HTTP statuses: "Limits: `MAX_DRIVER_IDS` (400), ..." names the answer past each limit, not a value.
STATUSES = {"400", "401", "404", "413", "429", "503"}


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table() -> dict[str, str]:
    """`VARIABLE` -> the default the Configuration table gives, as written (backticks dropped)."""
    rows = {}
    for line in section("Configuration").splitlines():
        if not line.startswith("| `"):
            continue
        names, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
        variables = re.findall(r"`(\w+)`", names)
        values = re.findall(r"`([^`]*)`", default) or [default] * len(variables)
        assert len(values) == len(variables), line
        rows.update(zip(variables, values, strict=True))
    return rows


@pytest.fixture
def code_defaults(monkeypatch) -> Settings:
    """Settings as the code defaults them: no variable from this environment, no .env file."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(PROJECT_ROOT)  # README's relative paths are relative to the project
    return Settings(_env_file=None)


def documented(variable: str, text: str) -> object:
    """The value README's `text` gives `variable`, parsed as the environment's would be."""
    field = variable.lower()
    if text == UNSET:
        return None
    if (
        field == "mlflow_tracking_uri"
        and text.startswith("sqlite:///")
        and not text.startswith("sqlite:////")
    ):
        text = f"sqlite:///{PROJECT_ROOT / text.removeprefix('sqlite:///')}"
    return getattr(Settings(_env_file=None, **{field: text}), field)


def effective(settings: Settings, field: str) -> object:
    if field == "bento_model_tag":  # unset means `<MODEL_NAME>:latest` (serving/lifecycle.py)
        return settings.bento_model_tag or f"{settings.model_name}:latest"
    return getattr(settings, field)


def test_the_table_documents_real_settings_with_their_defaults(code_defaults):
    rows = table()
    assert rows, "README.md's Configuration table was not found"
    wrong = []
    for variable, text in rows.items():
        field = variable.lower()
        assert field in Settings.model_fields, f"README documents {variable}, which the code does not read"
        if text == CORES:
            ok = code_defaults.workers == (os.cpu_count() or 1)
        else:
            ok = documented(variable, text) == effective(code_defaults, field)
        if not ok:
            wrong.append(f"{variable}: README {text!r}, code {effective(code_defaults, field)!r}")
    assert not wrong, "README.md's Configuration table disagrees with the code:\n" + "\n".join(wrong)


def test_the_table_lists_every_setting():
    missing = sorted(name.upper() for name in Settings.model_fields if name.upper() not in table())
    assert not missing, f"README.md's Configuration table does not list {missing}"


def test_settings_quoted_with_a_value_in_the_text_have_that_default(code_defaults):
    quoted = re.findall(r"`([A-Z][A-Z0-9_]+)`\s+\(`?([\w.,]+?)`?(?: s)?\)", README)
    checked = 0
    for variable, text in quoted:
        if variable.lower() not in Settings.model_fields or text in STATUSES:
            continue
        value = text.replace(",", "") if re.fullmatch(r"[\d,.]+", text) else text
        assert documented(variable, value) == effective(code_defaults, variable.lower()), (
            f"README quotes {variable} ({text}); the code's default is {effective(code_defaults, variable.lower())!r}"
        )
        checked += 1
    assert checked >= 5, quoted  # the pattern still finds the quotes


def test_figures_quoted_from_the_code():
    from driver_ranker.jobs.data import DataSpec
    from driver_ranker.jobs.training import TrainOptions
    from driver_ranker.serving.ranker import SHADOW_BACKLOG

    spec = importlib.util.spec_from_file_location(
        "driver_repo", PROJECT_ROOT / "feature_repo" / "driver_repo.py"
    )
    driver_repo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver_repo)

    data, options = DataSpec(), TrainOptions()
    figures = {
        r"backlog of (\d+)": SHADOW_BACKLOG,
        r"(\d+)-day ttl": driver_repo.driver_stats.ttl.days,
        r"\*\*Data\.\*\* ([\d,]+) drivers": data.n_drivers,
        r"over (\d+) days": data.days,
        r"([\d,]+) trip orders": data.n_orders,
        r"latest (\d+)% of orders": round(options.holdout_fraction * 100),
        r"at least ([\d.]+) \(`--min-auc`\)": options.min_auc,
    }
    for pattern, value in figures.items():
        match = re.search(pattern, README)
        assert match, f"README.md no longer says {pattern!r}"
        assert float(match.group(1).replace(",", "")) == value, f"README: {match.group(0)!r}; code: {value}"
