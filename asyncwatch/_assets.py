"""The Prometheus rules and configs, OpenTelemetry Collector configs and Grafana dashboards
that ``asyncwatch assets DIR`` writes out.

One copy lives in the repository (``exporters/``, ``grafana/``). Building a wheel copies
them into the package as ``asyncwatch/_assets_data/`` (``setup.py``'s build step, which
loads this file by path, so it must import nothing from asyncwatch); a source checkout or an
editable install reads them where they are. The generators (``generate.py``) are left out: they need
the development dependencies.
"""

from __future__ import annotations

from pathlib import Path

ROOTS = ("exporters", "grafana")
PACKAGED = Path(__file__).resolve().parent / "_assets_data"
CHECKOUT = Path(__file__).resolve().parent.parent


def is_asset(relative: Path) -> bool:
    """Whether a file under one of ROOTS is shipped (no Python sources, no caches)."""
    return relative.suffix not in {".py", ".pyc"} and "__pycache__" not in relative.parts


def asset_files(base: Path) -> list[Path]:
    """The asset files under ``base`` (a checkout or the packaged copy), relative to it."""
    out = []
    for root in ROOTS:
        for path in sorted((base / root).rglob("*")):
            relative = path.relative_to(base)
            if path.is_file() and is_asset(relative):
                out.append(relative)
    return out


def source() -> Path:
    """Where the assets are: the packaged copy in a wheel, else the source checkout."""
    if (PACKAGED / ROOTS[0]).is_dir():
        return PACKAGED
    if all((CHECKOUT / root).is_dir() for root in ROOTS):
        return CHECKOUT
    raise FileNotFoundError("asyncwatch's assets are missing from this installation")


def write(target: Path, *, force: bool = False) -> list[Path]:
    """Copy every asset under ``target`` (keeping exporters/ and grafana/), and return the
    files written. An existing file with other content is left alone unless ``force``."""
    base = source()
    files = asset_files(base)
    conflicts = [
        f
        for f in files
        if (target / f).exists() and (target / f).read_bytes() != (base / f).read_bytes()
    ]
    if conflicts and not force:
        names = ", ".join(str(f) for f in conflicts[:3])
        raise FileExistsError(
            f"{len(conflicts)} files differ in {target} ({names}...): use --force"
        )
    for f in files:
        (target / f).parent.mkdir(parents=True, exist_ok=True)
        (target / f).write_bytes((base / f).read_bytes())
    return files
