"""Configuration: load ``config.yaml``, validate it against ``schemas/config.schema.yaml``,
expand environment variables in paths, and normalise the night(s).

The Snakefile validates with :func:`snakemake.utils.validate` and then calls
:func:`normalize_config`; the command line calls :func:`load_config`, which does both.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from kpfmasters.core.errors import ConfigError

# The product is the checkout: the workflow (Snakefile, rules/, scripts/), config.yaml and its
# schema live beside the package, not inside it (see checkout_root).
REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG_PATH = REPO_ROOT / "config.yaml"

PATH_KEYS = ("l0_root", "work_root", "masters_root", "order_mask")
DATE_RE = re.compile(r"^\d{8}$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_schema() -> dict:
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def validate_config(config: dict) -> None:
    """Raise :class:`ConfigError` naming the first offending key (dotted path)."""
    import jsonschema

    schema = load_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"configuration key {where}: {err.message}")


def expand_vars(value: str, key: str, environ: dict | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``value``; unset without default fails."""
    environ = os.environ if environ is None else environ

    def repl(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        got = environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise ConfigError(f"configuration key {key}: environment variable {name} is not set")

    return _VAR_RE.sub(repl, value)


def check_date(value: Any, key: str = "date") -> str:
    """Return ``value`` as a valid ``YYYYMMDD`` string or raise naming ``key``."""
    text = str(value).strip()
    if not DATE_RE.match(text):
        raise ConfigError(f"configuration key {key}: {value!r} is not a date YYYYMMDD")
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError as exc:
        raise ConfigError(f"configuration key {key}: {value!r} is not a calendar date") from exc
    return text


def parse_dates(date: Any = "", dates: Any = "") -> list[str]:
    """The nights asked for: ``date`` (one) or ``dates`` (range ``A..B``, list, or comma list)."""
    have_date = date not in ("", None)
    have_dates = dates not in ("", None, [])
    if have_date and have_dates:
        raise ConfigError("configuration keys date and dates: set only one of them")
    if have_date:
        return [check_date(date, "date")]
    if not have_dates:
        return []
    if isinstance(dates, list):
        items = [check_date(d, "dates") for d in dates]
    else:
        text = str(dates).strip()
        if ".." in text:
            first, _, last = text.partition("..")
            start = dt.datetime.strptime(check_date(first, "dates"), "%Y%m%d").date()
            end = dt.datetime.strptime(check_date(last, "dates"), "%Y%m%d").date()
            if end < start:
                raise ConfigError(f"configuration key dates: range {text!r} ends before it starts")
            items = [
                (start + dt.timedelta(days=i)).strftime("%Y%m%d")
                for i in range((end - start).days + 1)
            ]
        else:
            items = [check_date(d, "dates") for d in re.split(r"[,\s]+", text) if d]
    return sorted(set(items))


def checkout_root() -> Path:
    """The kpf-masters checkout this package runs from (Snakefile, rules/, config.yaml).

    Raises :class:`ConfigError` in one line when the package was installed on its own (a
    wheel): the workflow and the configuration are part of the checkout, not of the package.
    """
    missing = [n for n in ("Snakefile", "config.yaml") if not (REPO_ROOT / n).is_file()]
    if missing:
        raise ConfigError(
            f"kpfmasters runs from its git checkout, but {REPO_ROOT} has no "
            f"{' or '.join(missing)} (the package was installed without its checkout): "
            "clone the repository and run `make venv` in it"
        )
    return REPO_ROOT


def normalize_config(config: dict, environ: dict | None = None) -> dict:
    """Return a copy of a *validated* config with paths expanded and ``nights`` added."""
    cfg = copy.deepcopy(config)
    for key in PATH_KEYS:
        cfg[key] = expand_vars(str(cfg[key]), key, environ)
    cfg["nights"] = parse_dates(cfg.get("date", ""), cfg.get("dates", ""))
    return cfg


def merge(base: dict, overrides: dict) -> dict:
    """Recursive dictionary update (like Snakemake's ``--config`` merge)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path`` (an empty file is an empty mapping)."""
    try:
        with open(path) as handle:
            raw = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration keys")
    return raw


def load_config(
    path: str | Path | None = None, overrides: dict | None = None, environ: dict | None = None
) -> dict:
    """Load, merge, validate and normalise a configuration (default ``config.yaml``).

    A file given as ``path`` is a layer over ``config.yaml``, merged as Snakemake merges
    ``--configfile`` (sections recursively, lists replaced), so a file holding only what it
    changes (e.g. ``config/kpf_production.yaml``) works the same on the command line and in
    the workflow; ``overrides`` go on top.
    """
    default = checkout_root() / "config.yaml"
    path = Path(path) if path else default
    raw = read_yaml(default)
    if path.resolve() != default.resolve():
        raw = merge(raw, read_yaml(path))
    if overrides:
        raw = merge(raw, overrides)
    validate_config(raw)
    return normalize_config(raw, environ)


def config_hash(*parts: Any) -> str:
    """Stable 16-hex-digit hash of JSON-serialisable configuration parts (``CFGHASH``)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
