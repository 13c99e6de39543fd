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
    """Read the configuration schema ``schemas/config.schema.yaml`` of the checkout.

    Returns
    -------
    dict
        The JSON schema, as parsed from YAML.
    """
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def validate_config(config: dict) -> None:
    """Validate a raw configuration against the schema.

    Parameters
    ----------
    config : dict
        The configuration as read from YAML (and merged with overrides), not yet normalised.

    Raises
    ------
    ConfigError
        Naming the first offending key (dotted path, e.g. ``masters.flat.nsigma``) and the
        schema's complaint.
    """
    import jsonschema

    schema = load_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"configuration key {where}: {err.message}")


def expand_vars(value: str, key: str, environ: dict | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in a configuration value.

    An unset or empty variable takes its default; without a default it is an error.

    Parameters
    ----------
    value : str
        The text to expand (a path from the configuration).
    key : str
        The configuration key it came from, for the error message.
    environ : dict, optional
        Environment to read (default ``os.environ``).

    Returns
    -------
    str
        ``value`` with every reference replaced.

    Raises
    ------
    ConfigError
        Naming ``key`` and the variable that is not set and has no default.
    """
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
    """Check that a value is a calendar date written ``YYYYMMDD``.

    Parameters
    ----------
    value : object
        The value as given (str or int); surrounding blanks are ignored.
    key : str
        The configuration key it came from, for the error message.

    Returns
    -------
    str
        The date as an 8-digit ``YYYYMMDD`` string.

    Raises
    ------
    ConfigError
        Naming ``key`` when the value is not 8 digits or not a calendar date.
    """
    text = str(value).strip()
    if not DATE_RE.match(text):
        raise ConfigError(f"configuration key {key}: {value!r} is not a date YYYYMMDD")
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError as exc:
        raise ConfigError(f"configuration key {key}: {value!r} is not a calendar date") from exc
    return text


def parse_dates(date: Any = "", dates: Any = "") -> list[str]:
    """The nights asked for by the ``date`` or ``dates`` configuration key.

    Parameters
    ----------
    date : str or int, optional
        One night, ``YYYYMMDD`` ('' or None: not set).
    dates : str or list, optional
        Several nights: an inclusive range ``A..B``, a list, or a comma- or blank-separated
        list of ``YYYYMMDD`` ('', None or []: not set).

    Returns
    -------
    list of str
        The nights, ``YYYYMMDD``, sorted and without repeats; empty when neither key is set.

    Raises
    ------
    ConfigError
        When both keys are set, a value is not a date, or a range ends before it starts.
    """
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

    Returns
    -------
    Path
        The checkout's root directory.

    Raises
    ------
    ConfigError
        In one line, when the package was installed on its own (a wheel): the workflow and
        the configuration are part of the checkout, not of the package.
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
    """Normalise a *validated* configuration: paths expanded, ``nights`` added.

    Parameters
    ----------
    config : dict
        A configuration that passed :func:`validate_config`; not modified.
    environ : dict, optional
        Environment for :func:`expand_vars` (default ``os.environ``).

    Returns
    -------
    dict
        A deep copy with ``${VAR}`` expanded in the path keys (``l0_root``, ``work_root``,
        ``masters_root``, ``order_mask``) and ``nights`` set by :func:`parse_dates`.

    Raises
    ------
    ConfigError
        From :func:`expand_vars` or :func:`parse_dates`, naming the key.
    """
    cfg = copy.deepcopy(config)
    for key in PATH_KEYS:
        cfg[key] = expand_vars(str(cfg[key]), key, environ)
    cfg["nights"] = parse_dates(cfg.get("date", ""), cfg.get("dates", ""))
    return cfg


def merge(base: dict, overrides: dict) -> dict:
    """Recursive dictionary update (like Snakemake's ``--config`` merge).

    Parameters
    ----------
    base : dict
        The configuration to start from; not modified.
    overrides : dict
        Values that replace those of ``base``; nested dictionaries are merged key by key.

    Returns
    -------
    dict
        A deep copy of ``base`` updated with ``overrides``.
    """
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path`` (an empty file is an empty mapping).

    Raises
    ------
    ConfigError
        When the file cannot be read, is not YAML or is not a mapping (naming the file).
    """
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
    """Load, merge, validate and normalise a configuration.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file laid over ``config.yaml`` of the checkout (:func:`checkout_root`),
        merged as Snakemake merges ``--configfile`` (sections recursively, lists replaced),
        so a file holding only what it changes (``config/kpf_production.yaml``) works the
        same on the command line and in the workflow. Default: ``config.yaml`` alone.
    overrides : dict, optional
        Values merged over the files' (:func:`merge`) before validation.
    environ : dict, optional
        Environment for the expansion of paths (default ``os.environ``).

    Returns
    -------
    dict
        The validated, normalised configuration (:func:`normalize_config`).

    Raises
    ------
    ConfigError
        When a file cannot be read or is not YAML (naming the file), or a key is invalid
        (naming the key).
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
    """Stable hash of configuration parts, as written in a master's ``CFGHASH``.

    Parameters
    ----------
    *parts : object
        JSON-serialisable values (dictionary keys are sorted; other objects go through
        ``str``).

    Returns
    -------
    str
        The first 16 hex digits of the SHA-256 of their compact JSON text.
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
