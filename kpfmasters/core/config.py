"""Configuration: load ``config.yaml``, validate it against ``schemas/config.schema.yaml``,
expand environment variables in paths, and normalise the night(s).

The Snakefile calls :func:`validate_config` (one line naming the key) and then
:func:`normalize_config`; the command line calls :func:`load_config`, which does both, with
``--configfile`` files as partial overrides of ``config.yaml`` and ``--set`` on top.
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


def _known_keys(schema: dict, node: dict, depth: int = 0) -> set[str]:
    """Property names a (sub-)schema allows, through ``$ref``, ``allOf``, ``anyOf``, ``oneOf``."""
    if depth > 8 or not isinstance(node, dict):
        return set()
    keys = set((node.get("properties") or {}).keys())
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = schema
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        keys |= _known_keys(schema, target, depth + 1)
    for combo in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(combo) or []:
            keys |= _known_keys(schema, sub, depth + 1)
    return keys


def validate_config(config: dict) -> None:
    """Raise :class:`ConfigError` naming the first offending key (dotted path), on one line.

    An unknown key is named with the nearest known one (``dat``: did you mean ``date``?).
    """
    import difflib

    import jsonschema

    schema = load_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = list(err.absolute_path)
        if err.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(
            err.instance, dict
        ):
            known = sorted(_known_keys(schema, err.schema))
            unknown = sorted(str(k) for k in err.instance if k not in known)
            if unknown:
                key = ".".join(str(p) for p in [*path, unknown[0]])
                close = difflib.get_close_matches(unknown[0], known, n=1)
                hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
                raise ConfigError(f"configuration key {key}: not a known key{hint}")
        where = ".".join(str(p) for p in path) or "(top level)"
        message = " ".join(err.message.split())
        if len(message) > 200:
            message = message[:200] + " ..."
        raise ConfigError(f"configuration key {where}: {message}")


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
        A deep copy with ``${VAR}`` and ``~`` expanded in the path keys (``l0_root``,
        ``work_root``, ``masters_root``, ``order_mask``), each made absolute against the
        current directory (the caller's), and ``nights`` set by :func:`parse_dates`.

    Raises
    ------
    ConfigError
        From :func:`expand_vars` or :func:`parse_dates`, naming the key, or when an output
        root lies inside ``l0_root`` (:func:`check_roots`).
    """
    cfg = copy.deepcopy(config)
    for key in PATH_KEYS:
        cfg[key] = resolve_path(expand_vars(str(cfg[key]), key, environ))
    check_roots(cfg)
    cfg["nights"] = parse_dates(cfg.get("date", ""), cfg.get("dates", ""))
    return cfg


def resolve_path(value: str) -> str:
    """``~`` expanded and made absolute against the current directory (the caller's)."""
    return os.path.abspath(os.path.expanduser(value))


def check_roots(cfg: dict) -> None:
    """The output roots (``work_root``, ``masters_root``) may not lie inside ``l0_root``:
    the raw data area is the instrument's, and a night's scan would meet the products."""
    l0 = Path(os.path.realpath(cfg["l0_root"]))
    for key in ("work_root", "masters_root"):
        out = Path(os.path.realpath(cfg[key]))
        if out == l0 or l0 in out.parents:
            raise ConfigError(
                f"configuration key {key}: {cfg[key]} lies inside l0_root {cfg['l0_root']}; "
                "expected an output directory outside the raw data"
            )


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


def read_config_file(path: str | Path) -> dict:
    """One configuration file's mapping (raises :class:`ConfigError` naming the file)."""
    path = Path(path)
    try:
        with open(path) as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        text = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML ({text})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration keys")
    return raw


def merged_config(
    paths: str | Path | list | tuple | None = None, overrides: dict | None = None
) -> dict:
    """``config.yaml``, then each file of ``paths`` (partial overrides, later winning), then
    ``overrides``: merged, not yet validated."""
    if paths is None or isinstance(paths, (str, Path)):
        paths = [paths] if paths else []
    default = checkout_root() / "config.yaml"
    raw = read_config_file(default)
    for path in paths:
        if Path(path).resolve() != default.resolve():
            raw = merge(raw, read_config_file(path))
    if overrides:
        raw = merge(raw, overrides)
    return raw


def load_config(
    path: str | Path | list | tuple | None = None,
    overrides: dict | None = None,
    environ: dict | None = None,
) -> dict:
    """Load, merge, validate and normalise the configuration.

    The checkout's ``config.yaml`` holds every default; ``path`` (one file or a list) holds
    partial overrides merged over it, then ``overrides`` (``--set``).
    """
    raw = merged_config(path, overrides)
    validate_config(raw)
    return normalize_config(raw, environ)


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` overrides as a nested dict; dotted keys reach into sections
    (``masters.flat.nsigma=2.5``); values are YAML (numbers, booleans, strings), except
    the paths, which are taken as written (a ``#`` or ``: `` in a path stays)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        if not parents and leaf in PATH_KEYS:
            node[leaf] = value
            continue
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def add_config_arguments(parser) -> None:
    """``--configfile`` (partial overrides, repeatable) and ``--set KEY=VALUE`` (repeatable):
    the same on every command that reads the configuration."""
    parser.add_argument(
        "--configfile",
        action="append",
        default=[],
        metavar="FILE",
        help="configuration file with the keys to change (merged over the checkout's "
        "config.yaml; repeatable, later files winning)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="configuration override, e.g. masters.flat.nsigma=2.5 (repeatable)",
    )


def config_from_args(args, overrides: dict | None = None, environ: dict | None = None) -> dict:
    """The configuration of a command: files of ``--configfile``, ``--set``, ``overrides``."""
    sets = parse_sets(getattr(args, "set", []) or [])
    return load_config(getattr(args, "configfile", []) or [], merge(sets, overrides or {}), environ)


def snakemake_config(cfg: dict) -> dict:
    """A normalised configuration as Snakemake's config (the file passed with
    ``--configfile``): every key but the derived ``nights``."""
    return {k: v for k, v in cfg.items() if k != "nights"}


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
