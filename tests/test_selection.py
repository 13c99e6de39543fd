"""Selection from headers (docs/reference.md §3): rules, ordering, usability, arclamp groups."""

import copy

import pytest

from kpfmasters.plan.night import Frame
from kpfmasters.plan.selection import check_rule, plan_night, select

DATE = "20230606"


def frame(name_sec, imtype, exptime, mjd, obj="x", problem="", shapes=None, **extra):
    header = {"IMTYPE": imtype, "OBJECT": obj, "EXPTIME": exptime, "MJD-OBS": mjd, **extra}
    header = {k: v for k, v in header.items() if v is not None}
    return Frame(
        name=f"KP.{DATE}.{name_sec:05d}.00.fits",
        path=f"/L0/{DATE}/KP.{DATE}.{name_sec:05d}.00.fits",
        size=1000 + name_sec,
        mtime_ns=0,
        header=header,
        ccd_shapes=shapes or {"GREEN_CCD": [16, 16], "RED_CCD": [16, 16]},
        problem=problem,
    )


def test_rule_comparisons():
    f = frame(1, "bias", 0.0, 60101.1)
    assert (
        check_rule(f, {"keyword": "IMTYPE", "op": "==", "value": "Bias", "ignore_case": True}) == ""
    )
    assert "fails" in check_rule(f, {"keyword": "IMTYPE", "op": "==", "value": "Bias"})
    assert check_rule(f, {"keyword": "EXPTIME", "op": "<=", "value": 0.1}) == ""
    assert "missing" in check_rule(f, {"keyword": "ELAPSED", "op": "<=", "value": 0.1})
    g = frame(2, "Bias", "zero", 60101.2)
    assert "not a number" in check_rule(g, {"keyword": "EXPTIME", "op": "==", "value": 0.0})
    h = frame(3, "Arclamp", 30.0, 60101.3, obj=" une")
    assert "fails" in check_rule(h, {"keyword": "OBJECT", "op": "==", "value": "une"})


def test_default_selection_and_order(base_config):
    frames = [
        frame(500, "Bias", 0.0, 60101.50),
        frame(100, "Bias", 0.0, 60101.10),
        frame(300, "Bias", 0.0, 60101.10),  # same MJD as 100: ordered by name
        frame(200, "BIAS", 0.0, 60101.20),  # IMTYPE compared case-insensitively
        frame(600, "Dark", 600.0, 60101.60),
        frame(700, "Dark", 60.0, 60101.70),  # short dark: not selected
        frame(800, "Flatlamp", 30.0, 60101.80),
        frame(900, "Flatlamp", 120.0, 60101.90),  # long flat: not selected
        frame(950, "Object", 600.0, 60101.95),
    ]
    plan = plan_night(frames, [], DATE, base_config)
    bias = plan.get("bias")
    assert [f.name[12:17] for f in bias.used] == ["00100", "00300", "00200", "00500"]
    assert [f.name[12:17] for f in plan.get("dark").used] == ["00600"]
    assert not plan.get("dark").buildable
    assert "1 frame(s) matched IMTYPE == 'Dark' and EXPTIME >= 300.0" in plan.get("dark").why_not()
    assert "at least 2 needed" in plan.get("dark").why_not()
    assert ("KP.20230606.00700.00.fits", "EXPTIME 60.0 fails >= 300.0") in plan.get(
        "dark"
    ).near_misses
    assert [f.name[12:17] for f in plan.get("flat").used] == ["00800"]
    assert plan.arclamps() == []


def test_arclamp_groups_and_configured_objects(base_config):
    frames = [
        frame(100 + i, "Arclamp", 30.0, 60101.1 + i / 100, obj=o)
        for i, o in enumerate(["une", "thar", "une", "thar", "etalon", "a b/c"])
    ]
    plan = plan_night(frames, [], DATE, base_config)
    objs = {s.obj: len(s.used) for s in plan.arclamps()}
    assert objs == {"une": 2, "thar": 2, "etalon": 1, "a b/c": 1}
    assert plan.get("arclamp", "une").buildable and not plan.get("arclamp", "etalon").buildable
    cfg = copy.deepcopy(base_config)
    cfg["masters"]["arclamp"]["objects"] = ["thar", "missing"]
    plan = plan_night(frames, [], DATE, cfg)
    assert {s.obj: len(s.used) for s in plan.arclamps()} == {"thar": 2, "missing": 0}


def test_unusable_frames_are_listed_not_used(base_config):
    small = {"GREEN_CCD": [8, 8], "RED_CCD": [8, 8]}
    frames = [
        frame(100, "Flatlamp", 30.0, 60101.10),
        frame(200, "Flatlamp", 30.0, 60101.20, problem="truncated: extension GREEN_AMP2"),
        frame(300, "Flatlamp", 30.0, None),
        frame(400, "Flatlamp", 0.0, 60101.40),
        frame(500, "Flatlamp", 30.0, 60101.50, shapes=small),
        frame(600, "Flatlamp", 30.0, 60101.60),
        frame(700, "Flatlamp", 30.0, 60101.60),  # duplicate of 600? different size: no
    ]
    frames[6].size = frames[5].size
    plan = plan_night(frames, [], DATE, base_config)
    picks = {p.frame.name[12:17]: (p.used, p.reason) for p in plan.get("flat").picks}
    assert picks["00100"] == (True, "")
    assert "truncated" in picks["00200"][1] and not picks["00200"][0]
    assert "MJD-OBS missing" in picks["00300"][1]
    assert "cannot normalise" in picks["00400"][1]
    assert "CCD shapes" in picks["00500"][1]
    assert picks["00600"] == (True, "")
    assert "duplicate of KP.20230606.00600.00.fits" in picks["00700"][1]
    rows = plan.get("flat").rows()
    assert [r["L0FILE"][12:17] for r in rows] == [
        "00100",
        "00200",
        "00400",
        "00500",
        "00600",
        "00700",
        "00300",
    ]
    assert [r["USED"] for r in rows] == [True, False, False, False, True, False, False]
    assert rows[-1]["MJD_OBS"] is None  # missing MJD-OBS sorts last


def test_near_misses_and_log_lines(base_config):
    frames = [frame(100, "Bias", 0.0, 60101.1), frame(200, "Bias", 1.0, 60101.2)]
    plan = plan_night(frames, [("KP.20230606.00300.00-2.fits", "re-delivered")], DATE, base_config)
    text = "\n".join(plan.log_lines())
    assert "ignored KP.20230606.00300.00-2.fits: re-delivered" in text
    assert "KP.20230606.00200.00.fits not selected: EXPTIME 1.0 fails == 0.0" in text
    assert "master bias for 20230606 not made" in text


@pytest.mark.parametrize("k", ["IMTYPE", "EXPTIME"])
def test_missing_keyword_never_selects(base_config, k):
    f = frame(100, "Bias", 0.0, 60101.1)
    del f.header[k]
    sel = select([f], DATE, "bias", base_config["masters"]["bias"]["select"], 2)
    assert sel.picks == []
