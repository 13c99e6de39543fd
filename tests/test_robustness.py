"""Broken nights: every bad input has a stated outcome, and the rest of the night is built.

One Snakemake run (module fixture) over four nights of a tiny simulated set-up:

- 20230606: a good night (3 biases, 2 darks, 2 flats) plus the corpus of bad files of
  :data:`CASES`, and 4 arcs whose OBJECT has spaces, slashes, quotes or non-ASCII bytes;
- 20230607: an empty night (directory without files);
- 20230608: one flat and 2 arcs: no bias, dark or flat of its own, the arcs use 0606's;
- 20230801: two darks and no bias within the maximum age: the dark is dropped.

Two more runs reuse its L0 and 2D files: one with a damaged order mask (the flat fails, the
rest is built), one (dry) without an order mask. Predecessor fallback over unreadable
masters on disk is checked in-process (no Snakemake needed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters.core.config import load_config
from kpfmasters.core.errors import InputError, NoPredecessorError
from kpfmasters.core.naming import master_name
from kpfmasters.io.fits import write_fits
from kpfmasters.plan import plans as workflow_support
from kpfmasters.plan.plans import Plans
from kpfmasters.sim.simulate import simulate_night
from tests.badinputs import (
    derive,
    duplicate,
    empty_file,
    float_amps_with,
    narrow_amp,
    not_fits,
    replace_in_header,
    truncate,
)
from tests.smk import Night, snakemake
from tests.verifyfits import assert_verified, needs_fitsverify

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("robustness")]

DATE, EMPTY, ONE_FLAT, FAR = "20230606", "20230607", "20230608", "20230801"
SIZE = 48
HOSTILE = "Th Ar/../sky 'lamp'"  # spaces, slashes, dots, quotes
NON_ASCII_BYTES = "autocal-é-lamp".encode()  # written into the header as raw UTF-8 bytes
NON_ASCII_READ = "autocal-\\xc3\\xa9-lamp"  # as the index reads it: astropy says "??"
# Pixels set to NaN, +Inf, -Inf in GREEN_AMP1 (stored rows, columns) of one bias; AMP1 is
# not mirrored, but KPF's GREEN image (2 amplifiers) is flipped up-down after tiling, so
# CCD pixel = (SIZE - 1 - row, column - prescan).
BAD_PIXELS = [(10, 10, np.nan), (11, 12, np.inf), (12, 14, -np.inf)]
BAD_CCD_PIXELS = {(SIZE - 1 - row, col - 4) for row, col, _ in BAD_PIXELS}

# case -> seconds after UT midnight of the derived file
CASES = {
    "empty": 70000,
    "not_fits": 70010,
    "truncated": 70020,
    "no_imtype": 70030,
    "no_exptime": 70040,
    "no_mjd": 70050,
    "text_exptime": 70060,
    "nan_inf": 70070,
    "amp_shape": 70080,
    "ccd_size": 70090,
    "duplicate": 70100,
    "hostile_1": 70110,
    "hostile_2": 70120,
    "non_ascii_1": 70130,
    "non_ascii_2": 70140,
}


def name(case: str, date: str = DATE) -> str:
    return f"KP.{date}.{CASES[case]:08.2f}.fits"


@dataclass
class Run:
    night: Night
    returncode: int
    stderr: str
    good_bias: list[str]


def build_broken(root: Path) -> Night:
    """Simulate the four nights and add the bad-input corpus to the first."""
    sim = simulate_night(
        root / "sim",
        DATE,
        seed=1,
        size=SIZE,
        counts={"bias": 3, "dark": 2, "flat": 2, "arclamp": {"autocal-une-sky": 4}},
        extras=False,
    )
    counts = {"bias": 0, "dark": 0, "flat": 1, "arclamp": {"autocal-une-sky": 2}}
    simulate_night(root / "sim", ONE_FLAT, seed=1, size=SIZE, counts=counts, extras=False)
    counts = {"bias": 0, "dark": 2, "flat": 0, "arclamp": {}}
    simulate_night(root / "sim", FAR, seed=1, size=SIZE, counts=counts, extras=False)
    counts = {"bias": 1, "dark": 0, "flat": 0, "arclamp": {}}
    big = simulate_night(root / "big", DATE, seed=2, size=SIZE + 16, counts=counts, extras=False)
    (root / "sim" / "L0" / EMPTY).mkdir()

    night_dir = sim.l0_dir
    bias = [f.path for f in sim.expected("bias")]
    dark = sim.expected("dark")[0].path
    arcs = [f.path for f in sim.expected("arclamp")]
    s = CASES
    empty_file(night_dir, DATE, s["empty"])
    not_fits(night_dir, DATE, s["not_fits"])
    truncate(derive(bias[0], DATE, s["truncated"]))
    derive(bias[0], DATE, s["no_imtype"], drop=("IMTYPE",))
    derive(bias[0], DATE, s["no_exptime"], drop=("EXPTIME",))
    derive(bias[0], DATE, s["no_mjd"], drop=("MJD-OBS",))
    derive(dark, DATE, s["text_exptime"], header={"EXPTIME": "600 s"})
    # the third bias itself gets the bad pixels (a copy would stack like a twin)
    derive(bias[2], DATE, s["nan_inf"], edit=float_amps_with({"GREEN_AMP1": BAD_PIXELS}))
    bias.pop(2).unlink()
    derive(bias[0], DATE, s["amp_shape"], edit=narrow_amp("GREEN_AMP2"))
    other = derive(big.expected("bias")[0].path, DATE, s["ccd_size"])
    shutil.move(other, night_dir / other.name)
    duplicate(bias[1], DATE, s["duplicate"])
    for case, arc in (("hostile_1", arcs[0]), ("hostile_2", arcs[1])):
        derive(arc, DATE, s[case], header={"OBJECT": HOSTILE})
    for case, arc in (("non_ascii_1", arcs[2]), ("non_ascii_2", arcs[3])):
        path = derive(arc, DATE, s[case], header={"OBJECT": "autocal-XX-lamp"})
        replace_in_header(path, b"autocal-XX-lamp", NON_ASCII_BYTES)
    for arc in arcs:  # only the renamed copies stay
        arc.unlink()
    night = Night(root, [DATE, EMPTY, ONE_FLAT, FAR])
    night.good_bias = [p.name for p in bias]
    return night


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Run:
    night = build_broken(tmp_path_factory.mktemp("broken"))
    proc = snakemake(night, "--keep-going", check=False)
    return Run(night, proc.returncode, proc.stderr, night.good_bias)


def selection_report(run: Run, date: str = DATE) -> str:
    return (run.night.work_root / "selection" / f"{date}.txt").read_text()


def master(run: Run, kind: str, date: str = DATE) -> Path:
    return run.night.master(date, kind)


def inputs(path: Path) -> dict[str, tuple[bool, str]]:
    with fits.open(path) as hdul:
        table = hdul["INPUTS"].data
        return {str(r["L0FILE"]): (bool(r["USED"]), str(r["REASON"])) for r in table}


def all_input_names(run: Run) -> set[str]:
    names = set()
    for path in run.night.masters_root.rglob("*.fits"):
        if not path.name.endswith("_L1.fits"):  # an L1's INPUTS lists its 2D master
            names |= set(inputs(path))
    return names


# -- the run as a whole ---------------------------------------------------------------------


def test_the_run_succeeds_and_builds_exactly_what_it_can(broken):
    assert broken.returncode == 0, broken.stderr[-4000:]
    made = sorted(
        str(p.relative_to(broken.night.masters_root))
        for p in broken.night.masters_root.rglob("*")
        if p.is_file()
    )
    expected = [
        f"{DATE}/{master_name(DATE, 'arclamp', NON_ASCII_READ)}",
        f"{DATE}/{master_name(DATE, 'arclamp', HOSTILE)}",
        f"{DATE}/kpf_{DATE}_master_bias.fits",
        f"{DATE}/kpf_{DATE}_master_dark.fits",
        f"{DATE}/kpf_{DATE}_master_flat.fits",
        f"{ONE_FLAT}/kpf_{ONE_FLAT}_master_arclamp_autocal-une-sky.fits",
    ]
    # Only masters (other products, e.g. QA documents, L1 files and trace files, may sit
    # beside them), no temporary file, no directory made from an OBJECT value.
    masters = [m for m in made if ("_master_" in m and m.endswith(".fits")) or "/." in m]
    assert [m for m in masters if not m.endswith("_L1.fits")] == sorted(expected)
    assert sorted(p.name for p in broken.night.masters_root.iterdir()) == [DATE, ONE_FLAT]


# -- files the header scan cannot read -------------------------------------------------------


@pytest.mark.parametrize(
    "case, problem",
    [
        ("empty", "empty file (0 bytes)"),
        ("not_fits", "not a readable FITS file (No SIMPLE card found"),
    ],
)
def test_unreadable_files_are_logged_and_never_selected(broken, case, problem):
    line = f"  unusable {name(case)}: {problem}"
    assert line in selection_report(broken)
    assert line in broken.stderr
    assert name(case) not in all_input_names(broken)
    assert not (
        broken.night.work_root / "2D" / DATE / name(case).replace(".fits", "_2D.fits")
    ).exists()


# -- picked frames that cannot be used: INPUTS row with USED = false and the reason -------------


@pytest.mark.parametrize(
    "case, reason",
    [
        ("truncated", "not a readable FITS file (File may have been truncated: actual file length"),
        ("no_mjd", "MJD-OBS missing"),
        ("amp_shape", f"GREEN amplifiers differ in shape: [({SIZE + 30}, 77), ({SIZE + 30}, 78)]"),
        (
            "ccd_size",
            "CCD shapes {'CA_HK': (32, 128), 'GREEN_CCD': (64, 64), 'RED_CCD': (64, 64)} "
            "differ from the night's {'CA_HK': (32, 128), 'GREEN_CCD': (48, 48), "
            "'RED_CCD': (48, 48)}",
        ),
        ("duplicate", "duplicate of {bias1} (same MJD-OBS, DATE-OBS and size)"),
    ],
)
def test_unusable_picked_frames_are_listed_not_used_with_the_reason(broken, case, reason):
    reason = reason.replace("{bias1}", broken.good_bias[1])
    used, why = inputs(master(broken, "bias"))[name(case)]
    assert not used and why.startswith(reason), why
    log = (broken.night.work_root / "logs" / DATE / "master_bias.log").read_text()
    assert f"WARNING kpfmasters:   {name(case)} not used: {reason}" in log
    assert f"  {name(case)} MJD-OBS=" in selection_report(broken)
    assert not (
        broken.night.work_root / "2D" / DATE / name(case).replace(".fits", "_2D.fits")
    ).exists()


def test_the_bias_stacks_exactly_the_usable_frames(broken):
    table = inputs(master(broken, "bias"))
    used = sorted(n for n, (ok, _) in table.items() if ok)
    assert used == sorted([*broken.good_bias, name("nan_inf")])
    with fits.open(master(broken, "bias")) as hdul:
        assert hdul[0].header["NFRAMES"] == 3


# -- header keywords missing or not numbers: a logged skip -----------------------------------


@pytest.mark.parametrize(
    "case, line",
    [
        ("no_imtype", "  not selected by any master {name}: IMTYPE missing"),
        ("no_exptime", "  {name} not selected: EXPTIME missing"),
        ("text_exptime", "  {name} not selected: EXPTIME '600 s' is not a number"),
    ],
)
def test_frames_with_missing_or_bad_keywords_are_logged_skips(broken, case, line):
    line = line.format(name=name(case))
    assert line in selection_report(broken)
    assert line in broken.stderr
    assert name(case) not in all_input_names(broken)


def test_missing_exptime_is_listed_under_the_master_that_nearly_picked_it(broken):
    report = selection_report(broken).splitlines()
    bias_start = next(i for i, x in enumerate(report) if x.startswith("bias: "))
    dark_start = next(i for i, x in enumerate(report) if x.startswith("dark: "))
    assert f"  {name('no_exptime')} not selected: EXPTIME missing" in report[bias_start:dark_start]
    assert (
        f"  {name('text_exptime')} not selected: EXPTIME '600 s' is not a number"
        in report[dark_start:]
    )


# -- NaN and Inf pixels: missing values ---------------------------------------------------------


def test_nan_and_inf_pixels_become_missing_values(broken):
    two_d = broken.night.work_root / "2D" / DATE / name("nan_inf").replace(".fits", "_2D.fits")
    with fits.open(two_d) as hdul:
        green = hdul["GREEN_CCD"].data
        assert {tuple(int(i) for i in p) for p in np.argwhere(~np.isfinite(green))} == (
            BAD_CCD_PIXELS
        )
        assert np.isnan(green[tuple(zip(*BAD_CCD_PIXELS, strict=True))]).all()
        assert np.isfinite(hdul["RED_CCD"].data).all()
    with fits.open(master(broken, "bias")) as hdul:
        avg, unc, cnt = (hdul[f"GREEN_CCD{x}"].data for x in ("", "_UNC", "_CNT"))
        assert np.isfinite(avg).all() and np.isfinite(unc).all()
        for pixel in BAD_CCD_PIXELS:
            assert cnt[pixel] == 2, pixel  # 3 frames, one value missing (no clip at N = 2)
        assert cnt.max() == 3


# -- OBJECT values that are not file-name material -------------------------------------------


@pytest.mark.parametrize("obj, cases", [(HOSTILE, "hostile"), (NON_ASCII_READ, "non_ascii")])
def test_object_values_give_safe_unique_file_names(broken, obj, cases):
    path = broken.night.masters_root / DATE / master_name(DATE, "arclamp", obj)
    assert re.fullmatch(
        rf"kpf_{DATE}_master_arclamp_[A-Za-z0-9._+-]+_[0-9a-f]{{8}}\.fits", path.name
    )
    with fits.open(path) as hdul:
        assert hdul[0].header["OBJECT"] == obj
        assert list(hdul["INPUTS"].data["L0FILE"]) == [name(f"{cases}_1"), name(f"{cases}_2")]
    names = {master_name(DATE, "arclamp", o) for o in (HOSTILE, NON_ASCII_READ, "autocal-une-sky")}
    assert len(names) == 3


def test_non_ascii_header_bytes_are_noted_not_fatal(broken):
    note = (
        "non-ASCII bytes in a header (FITS headers are ASCII); OBJECT read byte for byte, "
        "each such byte written \\xNN (a backslash as \\\\)"
    )
    for case in ("non_ascii_1", "non_ascii_2"):
        assert f"  note {name(case)}: {note}" in selection_report(broken)


# -- nights with too little ---------------------------------------------------------------------


def test_empty_night_says_so_and_makes_nothing(broken):
    assert f"night {EMPTY}: no L0 files under {broken.night.l0_root}/{EMPTY}" in broken.stderr
    assert not (broken.night.masters_root / EMPTY).exists()


def test_single_flat_is_not_a_master_and_the_arcs_use_the_nearest_masters(broken):
    assert (
        f"master flat for {ONE_FLAT} not made: 1 frame(s) matched IMTYPE == 'Flatlamp' and "
        "EXPTIME <= 60.0, 1 usable, at least 2 needed"
    ) in broken.stderr
    assert not master(broken, "flat", ONE_FLAT).exists()
    with fits.open(master(broken, "arclamp_autocal-une-sky", ONE_FLAT)) as hdul:
        head = hdul[0].header
        assert head["INPBIAS"] == f"kpf_{DATE}_master_bias.fits"
        assert head["INPDARK"] == f"kpf_{DATE}_master_dark.fits"
        assert head["INPFLAT"] == f"kpf_{DATE}_master_flat.fits"


def test_master_without_a_predecessor_in_reach_is_dropped_with_an_error(broken):
    assert (
        f"master dark for {FAR} not made: night {FAR} has no master bias of its own and the "
        f"nearest (kpf_{DATE}_master_bias.fits) is 56 days away, more than the maximum age "
        "of 30 days"
    ) in broken.stderr
    assert not (broken.night.masters_root / FAR).exists()
    assert not (broken.night.work_root / "2D" / FAR).exists()


# -- every product is valid FITS with correct checksums ------------------------------------------


@needs_fitsverify
def test_every_product_of_the_broken_night_passes_fitsverify(broken):
    masters = sorted(broken.night.masters_root.rglob("*.fits"))
    two_d = sorted((broken.night.work_root / "2D").rglob("*.fits"))
    l1 = [p for p in masters if p.name.endswith("_L1.fits")]
    assert (len(masters) - len(l1), len(two_d)) == (6, 13) and l1  # the L1 files too
    for path in masters + two_d:
        assert_verified(path)


# -- the order mask: damaged fails the flat only; missing drops it before anything runs ----------


def night_beside(broken: Run, root: Path, order_mask: Path) -> Night:
    """A run of night 0606 in ``root`` on the broken night's L0 and 2D files (the 2D
    directory is linked, so no frame is converted again) with another order mask."""
    (root / "work").mkdir()
    (root / "work" / "2D").symlink_to(broken.night.work_root / "2D")
    return Night(
        root, [DATE], extra_config={"l0_root": broken.night.l0_root, "order_mask": order_mask}
    )


def test_damaged_order_mask_fails_the_flat_only(broken, tmp_path):
    damaged = truncate(Path(shutil.copy(broken.night.order_mask, tmp_path / "mask.fits")), 0.5)
    night = night_beside(broken, tmp_path, damaged)
    masters = [str(night.master(DATE, kind)) for kind in ("bias", "dark", "flat")]
    proc = snakemake(night, "--keep-going", *masters, check=False)
    assert proc.returncode == 1
    made = sorted(p.name for p in (night.masters_root / DATE).iterdir())
    assert [m for m in made if "_master_" in m or m.startswith(".")] == [
        f"kpf_{DATE}_master_bias.fits",
        f"kpf_{DATE}_master_dark.fits",
    ]
    problem = (
        f"{damaged}: order mask extension GREEN_CCD cannot be read, the file is not a "
        "readable FITS file (File may have been truncated"
    )
    log = (night.work_root / "logs" / DATE / "master_flat.log").read_text()
    assert f"ERROR kpfmasters: {problem}" in log
    assert problem in proc.stderr


def test_missing_order_mask_drops_the_flat_and_its_arcs_before_anything_runs(broken, tmp_path):
    night = night_beside(broken, tmp_path, tmp_path / "no-such-mask.fits")
    proc = snakemake(night, "--dry-run")
    text = proc.stdout + proc.stderr
    assert (
        f"master flat for {DATE} not made: the order mask {tmp_path / 'no-such-mask.fits'} does "
        "not exist"
    ) in text
    for obj in (HOSTILE, NON_ASCII_READ):
        assert (
            f"master arclamp {obj!r} for {DATE} not made: night {DATE} has no master flat of its "
            "own and none exists"
        ) in text
    outputs = re.findall(r"^\s+output: (.+)$", text, re.M)
    jobs = sorted(Path(path).name for line in outputs for path in line.split(", "))
    assert [j for j in jobs if "_master_" in j] == [
        f"kpf_{DATE}_master_bias.fits",
        f"kpf_{DATE}_master_dark.fits",
    ]


# -- unreadable predecessor masters on disk are passed over (no Snakemake needed) ----------------


class ListLog:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, text):
        self.lines.append(("info", text))

    def warning(self, text):
        self.lines.append(("warning", text))

    def error(self, text):
        self.lines.append(("error", text))


def tiny_master(path: Path) -> Path:
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 4)), name="GREEN_CCD")]
    return write_fits(fits.HDUList(hdus), path)


def flip_data_byte(path: Path) -> Path:
    """Change one byte of the first extension's data in place (size and headers intact)."""
    with fits.open(path) as hdul:
        offset = hdul.fileinfo(1)["datLoc"] + 5
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))
    return path


def test_unreadable_masters_on_disk_are_passed_over_as_predecessors(tmp_path, monkeypatch):
    counts = {"bias": 0, "dark": 2, "flat": 0, "arclamp": {}}
    simulate_night(tmp_path / "sim", FAR, seed=5, size=SIZE, counts=counts, extras=False)
    masters = tmp_path / "masters"
    cfg = load_config(
        overrides={
            "date": FAR,
            "l0_root": str(tmp_path / "sim" / "L0"),
            "work_root": str(tmp_path / "work"),
            "masters_root": str(masters),
            "order_mask": str(tmp_path / "sim" / "order_mask.fits"),
        }
    )
    empty = masters / "20230731" / "kpf_20230731_master_bias.fits"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")
    cut = truncate(tiny_master(masters / "20230802" / "kpf_20230802_master_bias.fits"), 0.9)
    flipped = flip_data_byte(tiny_master(masters / "20230803" / "kpf_20230803_master_bias.fits"))
    good = tiny_master(masters / "20230804" / "kpf_20230804_master_bias.fits")

    log = ListLog()
    plans = Plans(cfg, log=log)
    assert plans.predecessor(FAR, "bias") == str(good)
    warnings = [text for level, text in log.lines if level == "warning"]
    assert warnings[:2] == [
        f"master {empty}: is empty (0 bytes), expected a FITS file; not used as a predecessor",
        f"master {cut}: is not a readable FITS file (File may have been truncated: actual file "
        f"length ({cut.stat().st_size}) is smaller than the expected size (8640)); not used as "
        "a predecessor",
    ]
    assert re.fullmatch(
        rf"master {flipped}: fails checksum verification \(.*verification failed for HDU "
        r"\('GREEN_CCD', 1\)\.\); not used as a predecessor",
        warnings[2],
    )
    assert len(warnings) == 3

    # Verdicts are remembered per file version: a new DAG build reads none of the masters
    # again, a changed file is checked again.
    verdicts = json.loads(plans.verified_path().read_text())
    assert verdicts[str(good)]["problem"] == "" and verdicts[str(flipped)]["problem"]
    checked: list[Path] = []
    real = workflow_support.verify_checksums
    monkeypatch.setattr(
        workflow_support, "verify_checksums", lambda path: (checked.append(path), real(path))
    )
    assert Plans(cfg, log=ListLog()).predecessor(FAR, "bias") == str(good)
    assert checked == []
    tiny_master(flipped)  # rewritten whole again: a new version, and a good one
    assert Plans(cfg, log=ListLog()).predecessor(FAR, "bias") == str(flipped)
    assert checked == [flipped]
    flip_data_byte(flipped)
    os.utime(flipped, ns=(flipped.stat().st_atime_ns, flipped.stat().st_mtime_ns + 10**9))

    good.unlink()
    log = ListLog()
    plans = Plans(cfg, log=log)
    with pytest.raises(NoPredecessorError) as info:
        plans.predecessor(FAR, "bias")
    assert str(info.value).startswith(
        f"night {FAR} has no master bias of its own and every one is unusable; passed over: "
        "kpf_20230731_master_bias.fits (is empty (0 bytes), expected a FITS file), "
        f"kpf_20230802_master_bias.fits (is not a readable FITS file (File may have been "
        f"truncated: actual file length ({cut.stat().st_size}) is smaller than the expected "
        "size (8640))), kpf_20230803_master_bias.fits (fails checksum verification ("
    )
    assert plans.night_targets(FAR) == []
    assert ("error", f"master dark for {FAR} not made: {info.value}") in log.lines


def test_a_failure_of_the_system_is_not_remembered_as_a_verdict(tmp_path, monkeypatch):
    cfg = load_config(
        overrides={
            "date": FAR,
            "l0_root": str(tmp_path / "L0"),
            "work_root": str(tmp_path / "work"),
            "masters_root": str(tmp_path / "masters"),
            "order_mask": str(tmp_path / "mask.fits"),
        }
    )
    good = tiny_master(tmp_path / "masters" / "20230804" / "kpf_20230804_master_bias.fits")
    real = workflow_support.verify_checksums

    def denied(path):
        try:
            raise PermissionError(13, "Permission denied", str(path))
        except PermissionError as exc:
            raise InputError(path, f"is not a readable FITS file ({exc})") from exc

    monkeypatch.setattr(workflow_support, "verify_checksums", denied)
    problem = Plans(cfg)._verified_problem(good)
    assert problem.startswith("is not a readable FITS file ([Errno 13] Permission denied")
    assert not Plans(cfg).verified_path().exists()  # nothing remembered
    monkeypatch.setattr(workflow_support, "verify_checksums", real)
    assert Plans(cfg)._verified_problem(good) == ""  # fixed: checked again, now good

    Plans(cfg).verified_path().write_text("[]")  # valid JSON of the wrong shape
    assert Plans(cfg)._verified_problem(good) == ""
    os.chmod(good, 0o600)  # a new version (ctime): verified again, remembered again
    assert Plans(cfg)._verified_problem(good) == ""
    verdicts = json.loads(Plans(cfg).verified_path().read_text())
    assert verdicts[str(good)]["version"][2] == good.stat().st_ctime_ns
