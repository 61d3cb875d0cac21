"""How each setting is written and checked: parsers (text -> value), checks (value -> problem),
and ``setting()``, which declares a ``Config`` field together with its environment variables,
its accepted form and its help, so ``_config`` describes every setting exactly once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .hostguard import check_allowed_hosts

T = TypeVar("T")

# ---------------------------------------------------------------- parsers (raw text -> value)


def _parse_flag(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true"):
        return True
    if low in ("0", "false"):
        return False
    raise ValueError("expected 1, 0, true or false")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected a whole number, e.g. 500") from None


def _parse_float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError("expected a number, e.g. 0.25") from None


def _parse_rate(raw: str) -> float:
    if raw.strip().lower() == "all":
        return math.inf
    return _parse_float(raw)


def _parse_str(raw: str) -> str:
    return raw.strip()


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# ---------------------------------------------------------------- checks (value -> error or None)


def _whole(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high}"
        return None

    return check


def _seconds(low: float, high: float, *, example: float) -> Callable[[Any], str | None]:
    """Finite seconds from ``low`` to ``high``: a value outside either breaks at run time
    (an infinite timeout overflows the thread APIs, a vanishing one abandons every call)."""

    def check(value: Any) -> str | None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            return f"must be a number of seconds from {low:g} to {high:g}, e.g. {example:g}"
        return None

    return check


def _rate(value: Any) -> str | None:
    if value == math.inf and not isinstance(value, bool):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.001 <= value <= 1e9:
        return "must be tasks per second from 0.001 to 1e9, or inf ('all')"
    return None


def _port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        return "must be a TCP port from 0 to 65535 (0 picks a free one)"
    return None


def _threshold(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.001 <= value < 3600:
        return "must be a number of seconds from 0.001 to 3600, e.g. 0.1"
    return None


def _fraction(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        return "must be a fraction from 0 to 1, e.g. 0.01"
    return None


def _is_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def _host(value: Any) -> str | None:
    """An IP address or a well-formed host name (whether it resolves is checked at install)."""
    if isinstance(value, str) and value and len(value) <= 253:
        try:
            ipaddress.ip_address(value)
            return None
        except ValueError:
            if _HOST_NAME.fullmatch(value) and not value.replace(".", "").isdigit():
                return None
    return "must be an IP address or a host name"


def _ipv4_host(value: Any) -> str | None:
    """aiomonitor listens on IPv4 only: an IPv4 address, or ``localhost``."""
    if isinstance(value, str) and value == "localhost":
        return None
    if isinstance(value, str):
        try:
            ipaddress.IPv4Address(value)
            return None
        except ValueError:
            pass
    return "must be an IPv4 address or localhost (the console does not listen on IPv6)"


def _str_tuple(value: Any) -> str | None:
    if isinstance(value, tuple) and all(isinstance(v, str) and v for v in value):
        return None
    return "must be a tuple of non-empty strings"


def _str_tuple_or_empty(value: Any) -> str | None:
    if isinstance(value, tuple) and all(isinstance(v, str) and v for v in value):
        return None
    return "must be a tuple of non-empty strings (or empty)"


def _regexes(value: Any) -> str | None:
    problem = _str_tuple_or_empty(value)
    if problem is not None:
        return problem
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"{pattern!r} is not a regular expression ({exc})"
    return None


def _url_path(value: Any) -> str | None:
    if isinstance(value, str) and (
        value == "" or (value.startswith("/") and not re.search(r"[\s?#]", value))
    ):
        return None
    return "must be a path starting with /, without spaces, ? or # (or empty for off)"


_METRICS_EXPORTERS = frozenset({"prometheus", "otlp", "console", "none"})
_TRACES_EXPORTERS = frozenset({"otlp", "console", "none"})


def _exporters(allowed: frozenset[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        problem = _str_tuple(value)
        if problem is None and value and set(value) <= allowed:
            return None
        return f"must name exporters among {', '.join(sorted(allowed))}"

    return check


def _listen_port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return "must be a TCP port from 1 to 65535"
    return None


def _any_str(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string (empty for the default)"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (an address in 127.0.0.0/8 or ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False  # any other host name may resolve to anything


def _protocol(value: Any) -> str | None:
    if value in ("http/protobuf", "grpc"):
        return None
    return "must be http/protobuf or grpc"


def _endpoint_problem(url: str, protocol: str) -> str | None:
    try:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if "://" not in url and protocol != "grpc":
        return "must be a URL such as http://localhost:4318"
    if parsed.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return "has an invalid port"
    if not parsed.hostname:
        return "names no host"
    return None


def sdk_problem(
    env: Mapping[str, str], *, periodic: bool, spans: bool, otlp: bool, protocol: str
) -> str | None:
    """What is wrong with the OpenTelemetry SDK's variables that what asyncwatch builds reads
    (``periodic``: a periodic metrics exporter; ``spans``: a traces exporter; ``otlp``: an
    OTLP exporter): values the SDK would reject or silently ignore. None: nothing."""
    checks: list[tuple[str, bool, float, float, str]] = [
        # variable, read by what asyncwatch builds, low, high, unit
        ("OTEL_METRIC_EXPORT_INTERVAL", periodic, 10, 86_400_000, "milliseconds"),
        ("OTEL_BSP_SCHEDULE_DELAY", spans, 1, 86_400_000, "milliseconds"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", spans, 1, 10_000_000, "spans"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", spans, 1, 10_000_000, "spans"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", otlp, 0.001, 3600, "seconds"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", otlp, 0.001, 3600, "seconds"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", otlp, 0.001, 3600, "seconds"),
    ]
    values: dict[str, float] = {}
    for variable, used, low, high, unit in checks:
        raw = env.get(variable)
        if not used or raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        whole = unit == "spans" or variable.startswith("OTEL_BSP")
        if not low <= value <= high or (whole and not value.is_integer()):
            kind = "a whole number" if whole else "a number"
            return f"{variable}={raw!r}: must be {kind} of {unit} from {low:g} to {high:g}"
        values[variable] = value
    batch = values.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
    queue = values.get("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    if spans and batch > queue:
        return (
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch:g} must not exceed "
            f"OTEL_BSP_MAX_QUEUE_SIZE={queue:g}"
        )
    if otlp:
        for variable in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ):
            raw = env.get(variable)
            if raw and (problem := _endpoint_problem(raw.strip(), protocol)):
                return f"{variable}={raw!r}: {problem}"
        raw = env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
        if raw and raw.strip().lower() not in ("gzip", "deflate", "none"):
            return f"OTEL_EXPORTER_OTLP_COMPRESSION={raw!r}: must be gzip, deflate or none"
    return None


# ---------------------------------------------------------------- forms (parser + check + words)


@dataclass(frozen=True)
class Form(Generic[T]):
    """How a setting is written: its parser, its check and the accepted form in words."""

    parse: Callable[[str], T]
    check: Callable[[Any], str | None]
    text: str  # for messages, ``asyncwatch config`` and the reference


FLAG = Form(_parse_flag, _is_bool, "1 or 0")
RATE = Form(_parse_rate, _rate, "tasks per second (0.001-1e9), or 'all'")
FRACTION = Form(_parse_float, _fraction, "fraction from 0 to 1")
THRESHOLD = Form(_parse_float, _threshold, "seconds from 0.001, e.g. 0.1")
PORT = Form(_parse_int, _port, "port 0-65535")
LISTEN_PORT = Form(_parse_int, _listen_port, "port 1-65535")
GLOBS = Form(_parse_list, _str_tuple, "comma-separated globs")
GLOBS_OR_NONE = Form(_parse_list, _str_tuple_or_empty, "comma-separated globs")
REGEXES = Form(_parse_list, _regexes, "comma-separated regular expressions")
METRICS_EXPORTERS = Form(
    _parse_list,
    _exporters(_METRICS_EXPORTERS),
    "comma-separated: prometheus, otlp, console, none",
)
TRACES_EXPORTERS = Form(
    _parse_list, _exporters(_TRACES_EXPORTERS), "comma-separated: otlp, console, none"
)
ALLOWED_HOSTS = Form(
    _parse_list, check_allowed_hosts, "comma-separated host names, addresses, .suffixes, or *"
)
PROTOCOL = Form(_parse_str, _protocol, "http/protobuf or grpc")
HOST = Form(_parse_str, _host, "IP address or host name that resolves")
IPV4_HOST = Form(_parse_str, _ipv4_host, "IPv4 address or localhost")
URL_PATH = Form(_parse_str, _url_path, "a path such as /metrics, or empty")
DIRECTORY = Form(_parse_str, _any_str, "existing writable directory")


def whole(low: int, high: int) -> Form[int]:
    """A whole number from ``low`` to ``high``."""
    return Form(_parse_int, _whole(low, high), f"whole number {low}-{high}")


def seconds(low: float, high: float, *, example: float, text: str = "") -> Form[float]:
    """Finite seconds from ``low`` to ``high`` (``text`` overrides the generated words)."""
    words = text or f"seconds from {low:g} to {high:g}, e.g. {example:g}"
    return Form(_parse_float, _seconds(low, high, example=example), words)


# ---------------------------------------------------------------- settings (a field + its form)


@dataclass(frozen=True)
class Setting:
    """What a ``Config`` field carries besides its default (in the field's metadata)."""

    env: tuple[str, ...]  # first is asyncwatch's own; later ones are standard OTEL_* fallbacks
    parse: Callable[[str], Any]
    check: Callable[[Any], str | None]
    form: str  # the accepted form, for messages and the reference
    help: str  # one paragraph, for the reference and ``asyncwatch config``
    listed: bool  # a tuple of strings: a list or a comma string is accepted in Python too


METADATA_KEY = "asyncwatch"


def setting(default: T, env: str | tuple[str, ...], form: Form[T], *, help: str) -> T:
    """A ``Config`` field with its default, its variables (asyncwatch's own first, then any
    standard ``OTEL_*`` fallback), its accepted form and its help: the one description of a
    setting, read by ``Config.from_env``, the checks, ``asyncwatch config`` and the reference.
    """
    variables = (env,) if isinstance(env, str) else env
    if not variables or not variables[0].startswith("ASYNCWATCH_"):
        raise TypeError(f"setting {variables!r}: the first variable must be ASYNCWATCH_*")
    meta = Setting(
        env=variables,
        parse=form.parse,
        check=form.check,
        form=form.text,
        help=" ".join(help.split()),
        listed=form.parse is _parse_list,
    )
    field: T = dataclasses.field(default=default, metadata={METADATA_KEY: meta})
    return field


def parse_list(raw: str) -> tuple[str, ...]:
    """Comma-separated text as a tuple of its non-empty parts, stripped."""
    return _parse_list(raw)
