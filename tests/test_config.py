"""Configuration: defaults, environment parsing, and errors that name the setting."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

import asyncwatch
from asyncwatch import Config, ConfigError
from asyncwatch._core.config import _described, settings, settings_reference
from asyncwatch._core.config_parse import FLAG, whole

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_safe() -> None:
    """The default endpoint is loopback on 9464 and timing is sampled."""
    c = Config.from_env({})
    assert c.prometheus_host == "127.0.0.1"
    assert c.prometheus_port == 9464
    assert c.metrics_exporters == ("prometheus",)
    assert c.traces_exporters == ("none",)
    assert c.timed_per_s == 200.0


def test_environment_values_are_parsed() -> None:
    """Each kind of variable is read: numbers, flags, lists, 'all'."""
    c = Config.from_env(
        {
            "ASYNCWATCH_MAX_KEYS": "50",
            "ASYNCWATCH_TIMED_PER_S": "all",
            "ASYNCWATCH_TASK_SPANS": "app.jobs.*, app.worker.run",
            "ASYNCWATCH_RAISE": "true",
            "ASYNCWATCH_PROMETHEUS_PORT": "9100",
        }
    )
    assert c.max_keys == 50
    assert math.isinf(c.timed_per_s)
    assert c.task_spans == ("app.jobs.*", "app.worker.run")
    assert c.raise_errors is True
    assert c.prometheus_port == 9100


def test_standard_otel_variables_are_honoured() -> None:
    """OTEL_METRICS_EXPORTER and OTEL_EXPORTER_PROMETHEUS_PORT apply when ours are unset."""
    c = Config.from_env(
        {"OTEL_METRICS_EXPORTER": "otlp,console", "OTEL_EXPORTER_PROMETHEUS_PORT": "9999"}
    )
    assert c.metrics_exporters == ("otlp", "console")
    assert c.prometheus_port == 9999


def test_asyncwatch_variable_wins_over_otel_one() -> None:
    """ASYNCWATCH_METRICS_EXPORTER takes precedence over OTEL_METRICS_EXPORTER."""
    c = Config.from_env({"OTEL_METRICS_EXPORTER": "otlp", "ASYNCWATCH_METRICS_EXPORTER": "console"})
    assert c.metrics_exporters == ("console",)


def test_otlp_endpoint_turns_traces_on() -> None:
    """With an OTLP endpoint configured and no traces exporter named, spans go over OTLP."""
    c = Config.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert c.traces_exporters == ("otlp",)


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("ASYNCWATCH_MAX_KEYS", "many", "ASYNCWATCH_MAX_KEYS='many': expected a whole number"),
        ("ASYNCWATCH_MAX_KEYS", "0", "ASYNCWATCH_MAX_KEYS='0': must be a whole number from 1"),
        ("ASYNCWATCH_RAISE", "yes", "ASYNCWATCH_RAISE='yes': expected 1, 0, true or false"),
        (
            "ASYNCWATCH_PROMETHEUS_PORT",
            "70000",
            "ASYNCWATCH_PROMETHEUS_PORT='70000': must be a TCP port",
        ),
        ("ASYNCWATCH_TASK_SPAN_RATIO", "2", "ASYNCWATCH_TASK_SPAN_RATIO='2': must be a fraction"),
        ("OTEL_METRICS_EXPORTER", "zipkin", "OTEL_METRICS_EXPORTER='zipkin': must name exporters"),
        ("ASYNCWATCH_TIMED_PER_S", "-1", "ASYNCWATCH_TIMED_PER_S='-1': must be tasks per second"),
    ],
)
def test_bad_variable_is_named(variable: str, raw: str, expected: str) -> None:
    """A bad value fails with the variable, the value and the accepted form."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({variable: raw})
    assert str(info.value).startswith(expected)


def test_unknown_variable_is_a_typo() -> None:
    """A misspelt ASYNCWATCH_ variable is an error that suggests the right one."""
    with pytest.raises(
        ConfigError,
        match="ASYNCWATCH_MAX_KEY: unknown asyncwatch setting; did you mean ASYNCWATCH_MAX_KEYS",
    ):
        Config.from_env({"ASYNCWATCH_MAX_KEY": "3"})


def test_bad_keyword_is_named() -> None:
    """A bad keyword argument names the argument and the accepted form."""
    with pytest.raises(ConfigError, match=r"Config\(max_keys=0\): must be a whole number from 1"):
        Config(max_keys=0)


def test_unknown_keyword_suggests() -> None:
    """An unknown keyword argument to install() is refused with a suggestion."""
    with pytest.raises(
        ConfigError,
        match="prometheus_prot: unknown asyncwatch setting; did you mean prometheus_port",
    ):
        asyncwatch.install(prometheus_prot=1)
    assert asyncwatch.current() is None


def test_install_fails_fast_on_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() raises at once for a bad variable and leaves nothing installed."""
    monkeypatch.setenv("ASYNCWATCH_PROMETHEUS_PORT", "http")
    with pytest.raises(ConfigError, match="ASYNCWATCH_PROMETHEUS_PORT='http'"):
        asyncwatch.install()
    assert asyncwatch.current() is None


def test_keyword_lists_are_accepted() -> None:
    """Lists and comma strings are accepted where a tuple is expected."""
    c = Config().replace(metrics_exporters=["otlp"], task_spans="a.*,b")
    assert c.metrics_exporters == ("otlp",)
    assert c.task_spans == ("a.*", "b")


def test_reference_lists_every_setting() -> None:
    """settings_reference() covers every Config field (the docs table is built from it)."""
    names = {row[0] for row in settings_reference()}
    fields = set(Config.__dataclass_fields__)
    assert names == fields


def test_each_field_carries_its_variables_form_and_help() -> None:
    """Every setting is described once, on its Config field: the field's metadata holds its
    variables (asyncwatch's own first), its accepted form and its help, and the environment
    table, the messages and the reference are all read from there."""
    described = settings()
    assert list(described) == [f.name for f in dataclasses.fields(Config)]
    for name, spec in described.items():
        assert spec.env[0].startswith("ASYNCWATCH_"), name
        assert spec.form and spec.help and "  " not in spec.help, name
        field = Config.__dataclass_fields__[name]
        assert _described(field) is spec
    assert described["metrics_exporters"].env == (
        "ASYNCWATCH_METRICS_EXPORTER", "OTEL_METRICS_EXPORTER")
    # the message of a bad variable comes from the same description
    with pytest.raises(ConfigError, match=r"ASYNCWATCH_MAX_KEYS='0'.*whole number 1-1000000"):
        Config.from_env({"ASYNCWATCH_MAX_KEYS": "0"})


def test_a_field_without_a_description_is_refused() -> None:
    """A field declared without ``setting(...)`` cannot slip in undescribed: deriving the
    table from it fails, naming the field."""

    @dataclasses.dataclass(frozen=True)
    class Undescribed:
        plain: int = 1
        described: int = dataclasses.field(default=1)

    for field in dataclasses.fields(Undescribed):
        with pytest.raises(TypeError, match=f"{field.name} is not declared with setting"):
            _described(field)


def test_setting_wants_asyncwatch_variable_first() -> None:
    """``setting()`` puts asyncwatch's own variable first (standard ``OTEL_*`` ones are only
    fallbacks), so a setting always has an ``ASYNCWATCH_*`` name to be set and named by."""
    from asyncwatch._core.config_parse import setting

    with pytest.raises(TypeError, match="ASYNCWATCH_"):
        setting(1, "OTEL_SOMETHING", whole(1, 2), help="x")
    with pytest.raises(TypeError, match="ASYNCWATCH_"):
        setting(True, (), FLAG, help="x")


def test_reference_meaning_is_the_fields_help() -> None:
    """The docs' settings table takes each setting's meaning from its field's help
    (tests/test_integrations.py checks the whole table is current)."""
    text = (ROOT / "docs" / "reference" / "settings.md").read_text()
    for name, spec in settings().items():
        assert f"| `{name}` |" in text
        assert spec.help.replace("|", "\\|") in text, name


def test_help_of_config_lists_every_setting() -> None:
    """``help(Config)`` (and API docs read from the docstring) lists every setting with its
    variable, default and help: the fields' own descriptions, not a second copy."""
    doc = Config.__doc__ or ""
    for name, spec in settings().items():
        default = Config.__dataclass_fields__[name].default
        assert f"- ``{name}`` (``{spec.env[0]}``, default ``{default!r}``): {spec.help}" in doc
