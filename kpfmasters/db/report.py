"""``calfiles`` rows as text (command output, logs) and as JSON (receipts)."""

from __future__ import annotations

import datetime as dt

from kpfmasters.db.masterfile import CONTENT_BITS


def _bits(value: int) -> str:
    names = [name for name, bit in CONTENT_BITS.items() if value & bit]
    return f"{value}({'|'.join(names) or '-'})"


def format_row(row: dict) -> str:
    """A ``calfiles`` row as one line of text.

    Parameters
    ----------
    row : dict
        A ``calfiles`` row (column -> value; ``startdate`` a date).

    Returns
    -------
    str
        cid, night, level, caltype, object, contentbits (with the CCD names), nframes,
        infobits, status, MD5 checksum and file name.
    """
    return (
        f"cid {row['cid']}: {row['startdate']:%Y%m%d} level {row['level']} {row['caltype']} "
        f"object={row['object']!r} contentbits={_bits(row['contentbits'])} "
        f"nframes={row['nframes']} infobits={row['infobits']} status={row['status']} "
        f"md5={row['checksum']} {row['filename']}"
    )


def row_to_json(row: dict) -> dict:
    """A ``calfiles`` row ready for ``json.dumps``.

    Parameters
    ----------
    row : dict
        A ``calfiles`` row (column -> value).

    Returns
    -------
    dict
        The same row with dates and times as ISO 8601 strings.
    """
    return {
        key: value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value
        for key, value in row.items()
    }


def write_receipt(path, date: str, rows: list[dict], not_made: list[str] = ()) -> None:
    """The registration receipt ``{"date", "rows", "not_made", "time"}`` (atomic write).

    ``not_made`` names the night's masters that were due but not made (so not registered).
    """
    import json
    from pathlib import Path

    from kpfmasters.io.fits import atomic_output

    receipt = {
        "date": date,
        "rows": [row_to_json(row) for row in rows],
        "not_made": list(not_made),
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_output(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(receipt, indent=2) + "\n")
