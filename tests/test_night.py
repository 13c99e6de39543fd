"""The night index: header scan, structural checks, ignored names, cache reuse."""

import json
import os

import numpy as np
from astropy.io import fits

from kpfmasters.plan.night import raw_object_value, raw_string_card, scan_night

DATE = "20230606"
GEOM = {"prescan": 4, "serial_overscan": 50, "parallel_overscan": 30}


def write_l0(path, amps=2, gain=5.0, shape=(46, 62), drop=None, cahk=True, **header):
    prim = fits.Header(
        {
            "IMTYPE": "Bias",
            "OBJECT": "autocal-bias",
            "EXPTIME": 0.0,
            "MJD-OBS": 60101.5,
            "DATE-OBS": "2023-06-06T12:00:00",
            **header,
        }
    )
    hdus = [fits.PrimaryHDU(header=prim)]
    for ccd in ("GREEN", "RED"):
        for n in range(1, amps + 1):
            name = f"{ccd}_AMP{n}"
            if name == drop:
                continue
            h = fits.Header()
            if gain is not None:
                h["CCDGAIN"] = gain
            hdus.append(fits.ImageHDU(np.zeros(shape, np.int32), header=h, name=name))
    if cahk:
        hdus.append(fits.ImageHDU(np.zeros((8, 16), np.int32), name="CA_HK"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_scan_shapes_problems_and_ignored(tmp_path):
    night = tmp_path / DATE
    night.mkdir()
    write_l0(night / f"KP.{DATE}.00100.00.fits")
    write_l0(night / f"KP.{DATE}.00200.00.fits", amps=4)
    write_l0(night / f"KP.{DATE}.00300.00.fits", drop="RED_AMP2")
    write_l0(night / f"KP.{DATE}.00400.00.fits", gain=None)
    write_l0(night / f"KP.{DATE}.00500.00.fits", shape=(20, 40))
    (night / f"KP.{DATE}.00600.00.fits").write_bytes(b"")
    (night / f"KP.{DATE}.00700.00.fits").write_text("SIMPLE = not really a FITS file\n" * 10)
    good = (night / f"KP.{DATE}.00100.00.fits").read_bytes()
    (night / f"KP.{DATE}.00800.00.fits").write_bytes(good[: len(good) - 2880])
    write_l0(night / f"KP.{DATE}.00900.00-1.fits")
    write_l0(night / "KP.20230607.00900.00.fits")
    frames, ignored = scan_night(tmp_path, DATE, tmp_path / "index.json", GEOM)
    by = {f.name[12:17]: f for f in frames}
    assert sorted(by) == ["00100", "00200", "00300", "00400", "00500", "00600", "00700", "00800"]
    assert by["00100"].problem == ""
    assert by["00100"].ccd_shapes == {"GREEN_CCD": [16, 16], "RED_CCD": [16, 16], "CA_HK": [8, 16]}
    assert by["00200"].ccd_shapes["GREEN_CCD"] == [32, 16]
    assert "RED_AMP2 missing" in by["00300"].problem
    assert "CCDGAIN missing" in by["00400"].problem
    assert "too small" in by["00500"].problem
    assert "empty file" in by["00600"].problem
    assert "not a readable FITS file" in by["00700"].problem
    assert "truncated" in by["00800"].problem
    assert by["00100"].header["IMTYPE"] == "Bias" and by["00100"].mjd == 60101.5
    reasons = dict(ignored)
    assert "re-delivered" in reasons[f"KP.{DATE}.00900.00-1.fits"]
    assert "differs from the night" in reasons["KP.20230607.00900.00.fits"]


def test_index_is_reused_until_a_file_changes(tmp_path, monkeypatch):
    night = tmp_path / DATE
    night.mkdir()
    a = write_l0(night / f"KP.{DATE}.00100.00.fits")
    write_l0(night / f"KP.{DATE}.00200.00.fits")
    index = tmp_path / "work" / "index.json"
    scan_night(tmp_path, DATE, index, GEOM)
    assert len(json.loads(index.read_text())["frames"]) == 2

    import kpfmasters.plan.night as night_mod

    calls = []
    real = night_mod.read_frame
    monkeypatch.setattr(
        night_mod, "read_frame", lambda p, g, k: calls.append(p.name) or real(p, g, k)
    )
    mtime = index.stat().st_mtime_ns
    frames, _ = scan_night(tmp_path, DATE, index, GEOM)
    assert calls == [] and len(frames) == 2 and index.stat().st_mtime_ns == mtime
    with fits.open(a, mode="update") as hdul:
        hdul[0].header["EXPTIME"] = 5.0
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))
    write_l0(night / f"KP.{DATE}.00300.00.fits")
    frames, _ = scan_night(tmp_path, DATE, index, GEOM)
    assert sorted(calls) == [a.name, f"KP.{DATE}.00300.00.fits"]
    assert {f.name: f.header["EXPTIME"] for f in frames}[a.name] == 5.0
    # a different geometry invalidates the whole index
    calls.clear()
    scan_night(tmp_path, DATE, index, {**GEOM, "prescan": 2})
    assert len(calls) == 3


def test_missing_night_directory_is_empty(tmp_path):
    assert scan_night(tmp_path, DATE, None, GEOM) == ([], [])


def test_objects_differing_only_in_non_ascii_bytes_read_apart(tmp_path):
    # astropy reads each non-ASCII header byte as '?': "é" (2 bytes in UTF-8) and "ü" both
    # become "??". The index keeps them apart, escaped byte for byte, and ASCII objects as
    # they are; quotes inside the value and trailing blanks follow the FITS string rules.
    night = tmp_path / DATE
    night.mkdir()
    objects = {"00100": "autocal-é-lamp", "00200": "autocal-ü-lamp", "00300": "it''s-é   "}
    for stamp, text in objects.items():
        path = write_l0(night / f"KP.{DATE}.{stamp}.00.fits", IMTYPE="Arclamp", OBJECT="X" * 20)
        raw = text.encode()
        data = path.read_bytes()
        card = b"'" + b"X" * 20 + b"'"
        new = b"'" + raw + b"'" + b" " * (len(card) - len(raw) - 2)
        path.write_bytes(data[:2880].replace(card, new) + data[2880:])
    write_l0(night / f"KP.{DATE}.00400.00.fits", IMTYPE="Arclamp", OBJECT="autocal-une-sky")
    frames, _ = scan_night(tmp_path, DATE, tmp_path / "index.json", GEOM)
    by = {f.name[12:17]: f for f in frames}
    assert by["00100"].header["OBJECT"] == "autocal-\\xc3\\xa9-lamp"
    assert by["00200"].header["OBJECT"] == "autocal-\\xc3\\xbc-lamp"
    assert by["00300"].header["OBJECT"] == "it's-\\xc3\\xa9"
    assert by["00400"].header["OBJECT"] == "autocal-une-sky" and by["00400"].note == ""
    for stamp in ("00100", "00200", "00300"):
        assert by[stamp].problem == ""
        assert by[stamp].note == (
            "non-ASCII bytes in a header (FITS headers are ASCII); OBJECT read byte for byte, "
            "each such byte written \\xNN (a backslash as \\\\)"
        )
    again, _ = scan_night(tmp_path, DATE, tmp_path / "index.json", GEOM)  # from the index
    assert [f.header for f in again] == [f.header for f in frames]


def test_raw_object_reads_long_strings_and_escapes_backslashes(tmp_path):
    # CONTINUE long strings (astropy writes them for values over 68 characters) are read
    # whole: for ASCII values the result equals astropy's; a non-ASCII byte in a continuation
    # card is found too; a backslash is doubled so the escaped form is unambiguous.
    ascii_long = "autocal-" + "lamp setting with a long, long name " * 3 + "it's the end"
    path = write_l0(tmp_path / "long.fits", OBJECT=ascii_long)
    assert b"CONTINUE" in path.read_bytes()[:5760]
    assert raw_string_card(path, "OBJECT").decode() == fits.getheader(path)["OBJECT"]
    assert raw_object_value(path) is None  # ASCII: astropy's value is used as it is

    placeholder = "X" * 90  # spans two cards; its tail lands in the CONTINUE card
    path = write_l0(tmp_path / "tail.fits", OBJECT="autocal-" + placeholder)
    data = bytearray(path.read_bytes())
    tail = data.index(b"X", data.index(b"CONTINUE"))
    data[tail : tail + 2] = "é".encode()
    path.write_bytes(bytes(data))
    value = raw_object_value(path)
    assert value is not None and "\\xc3\\xa9" in value and value.startswith("autocal-XXX")
    assert "&" not in value and len(value.replace("\\xc3\\xa9", "é")) == len("autocal-") + 89

    path = write_l0(tmp_path / "slash.fits", OBJECT="a\\b-XX")
    data = path.read_bytes()
    path.write_bytes(data[:2880].replace(b"a\\b-XX", "a\\b-é".encode()) + data[2880:])
    assert raw_object_value(path) == "a\\\\b-\\xc3\\xa9"
    assert raw_string_card(path, "NOSUCHKEY") is None
    assert raw_string_card(path, "EXPTIME") is None  # not a string value
