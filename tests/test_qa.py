"""Quality assessment: QC keywords, previews, the night's QA document and the Snakemake report.

A tiny simulated night (every master type) goes through the real workflow, with a master bias
of the night before already on disk: the same simulated detector, its GREEN_CCD shifted by
SHIFT electrons (and no QC keywords: its median is recomputed). The night's bias must be
flagged against it. ``snakemake --report`` then builds the report of the night.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import warnings
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from PIL import Image

from kpfmasters import __version__
from kpfmasters.core.config import load_config, merge
from kpfmasters.plan.previous import earlier_masters, previous_master
from kpfmasters.qa.figures import block_average, display_factor, render_preview
from kpfmasters.qa.records import check_record
from kpfmasters.science.qcstats import ccd_statistics, master_medians, qc_cards
from kpfmasters.sim.simulate import simulate_night
from tests.smk import Night, dry_run_outputs, snakemake

PREV, DATE = "20230605", "20230606"
QA = load_config(overrides={"date": DATE})["qa"]  # the shipped thresholds
SHIFT = 40.0  # electrons added to the previous night's GREEN_CCD master bias
SIZE = 64
COUNTS = {
    "bias": 3,
    "dark": 2,
    "flat": 2,
    "arclamp": {"autocal-une-sky": 2, "autocal-thar-all-eve": 2},
}
KINDS = ["bias", "dark", "flat", "arclamp_autocal-une-sky", "arclamp_autocal-thar-all-eve"]
EXTS = {k: ["GREEN_CCD", "RED_CCD"] + ([] if k.startswith("arclamp") else ["CA_HK"]) for k in KINDS}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("qa")]


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_previous_bias(path, sim, shift):
    """A master bias of the night before, as made by an older version (no QC keywords): the
    simulated detector's bias, GREEN_CCD shifted by ``shift`` electrons, no CA_HK."""
    hdus = [fits.PrimaryHDU(header=fits.Header({"IMTYPE": "Bias", "NFRAMES": 5}))]
    for ext, offset in (("GREEN_CCD", shift), ("RED_CCD", 0.0)):
        hdus.append(fits.ImageHDU(sim.ccds[ext].bias.astype(np.float64) + offset, name=ext))
    path.parent.mkdir(parents=True)
    fits.HDUList(hdus).writeto(path, checksum=True)


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    b = Night(root, [DATE])
    b.sim = simulate_night(root / "sim", DATE, seed=11, size=SIZE, extras=False, counts=COUNTS)
    fake_previous_bias(b.master(PREV, "bias"), b.sim, SHIFT)
    b.run = snakemake(b)
    b.before = {k: md5(b.master(DATE, k)) for k in KINDS}
    b.report = snakemake(b, "--report", "report.html")
    b.html = (root / "report.html").read_text()
    return b


def qa_doc(night):
    return json.loads((night.masters_root / DATE / f"kpf_{DATE}_masters_qa.json").read_text())


def embedded(html: str, name: str) -> dict:
    """The JSON object a Snakemake report assigns to ``name`` (``results``, ``categories``)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(rf"\b{name}\s*=\s*\{{", html):
        try:
            return decoder.raw_decode(html, match.end() - 1)[0]
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no {name} object in the report")


def data_of(entry: dict) -> bytes:
    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1])


# -- masters: QC keywords at write time -----------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_qc_keywords_are_written_with_the_master(nights, kind):
    mtype = kind.split("_")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstropyUserWarning)  # checksums must verify
        with fits.open(nights.master(DATE, kind), checksum=True) as hdul:
            nframes = hdul[0].header["NFRAMES"]
            for ext in EXTS[kind]:
                hdr, data = hdul[ext].header, hdul[ext].data
                cnt, unc = hdul[f"{ext}_CNT"].data, hdul[f"{ext}_UNC"].data
                good = np.isfinite(data) & ((unc > 0) if mtype == "flat" else True)
                if good.any():
                    assert hdr["QCMEDIAN"] == pytest.approx(np.median(data[good]), rel=1e-12)
                    mad = np.median(np.abs(data[good] - np.median(data[good])))
                    assert hdr["QCNOISE"] == pytest.approx(1.4826 * mad, rel=1e-9)
                assert hdr["QCNPIX"] == np.count_nonzero(good)
                assert hdr["QCREJFRC"] == pytest.approx(1 - cnt.sum() / (nframes * cnt.size))
                flag = {"arclamp": 5}.get(mtype, 10)
                assert hdr["QCLOWCNT"] == pytest.approx(np.mean(cnt < flag))
                if ext == "CA_HK":  # no amplifiers: no overscan keywords
                    assert "QCOSV1" not in hdr and "QCRN1" not in hdr
                    continue
                truth = nights.sim.ccds[ext]
                for amp in (1, 2):
                    level = truth.pedestal[amp - 1] * truth.gain[amp - 1]
                    assert abs(hdr[f"QCOSV{amp}"] - level) < 0.5
                    assert abs(hdr[f"QCRN{amp}"] / truth.read_noise[amp - 1] - 1) < 0.1
                assert "QCOSV3" not in hdr
            if mtype != "bias":  # the night before has only a bias: nothing to compare with
                assert "QCPREV" not in hdul[0].header
                assert all("QCDMED" not in hdul[e].header for e in EXTS[kind])


def hdul_ca_hk_has_no_change(nights) -> bool:
    """CA_HK: the previous master has none, so it is named but no change is computed."""
    hdr = fits.getheader(nights.master(DATE, "bias"), "CA_HK")
    return hdr["QCPREV"] == f"kpf_{PREV}_master_bias.fits" and "QCDMED" not in hdr


def test_shifted_previous_bias_is_flagged(nights):
    prev_name = f"kpf_{PREV}_master_bias.fits"
    with fits.open(nights.master(DATE, "bias")) as hdul:
        assert hdul[0].header["QCPREV"] == prev_name
        green, red = hdul["GREEN_CCD"].header, hdul["RED_CCD"].header
    # the same simulated detector both nights: only the edit moves the median
    assert green["QCPREV"] == prev_name
    assert hdul_ca_hk_has_no_change(nights)
    assert green["QCDMED"] == pytest.approx(-SHIFT, abs=1.0)
    assert green["QCPMED"] == pytest.approx(green["QCMEDIAN"] + SHIFT, abs=1.0)
    assert abs(red["QCDMED"]) < 1.0
    doc = qa_doc(nights)
    moved = [w for w in doc["warnings"] if "moved by" in w]
    assert len(moved) == 1, doc["warnings"]
    assert moved[0].startswith(f"master bias of {DATE} GREEN_CCD: median")
    assert prev_name in moved[0] and "qa.max_median_change.bias = 5" in moved[0]
    bias = next(m for m in doc["masters"] if m["master"] == "bias")
    assert moved[0] in bias["warnings"]
    assert bias["ccds"]["GREEN_CCD"]["median_change"] == pytest.approx(green["QCDMED"])
    # in the rule's log and on the terminal; the night still completed
    log = (nights.work_root / "logs" / DATE / "qa_night.log").read_text()
    assert "WARNING" in log and moved[0] in log
    assert moved[0] in nights.run.stderr
    assert all(nights.master(DATE, k).is_file() for k in KINDS)


def test_a_larger_threshold_clears_the_warning(nights):
    record = next(m for m in qa_doc(nights)["masters"] if m["master"] == "bias")
    assert [w for w in check_record(record, QA, 0.01) if "moved by" in w]
    qa = merge(QA, {"max_median_change": {"bias": 2 * SHIFT}, "warn_low_count": False})
    assert not [w for w in check_record(record, qa, 0.01) if "moved by" in w]
    qa = merge(QA, {"max_median_change": {"bias": None}})
    assert not [w for w in check_record(record, qa, 0.01) if "moved by" in w]
    qa = merge(QA, {"max_previous_age_days": 0})  # the previous master is 1 day older
    assert not [w for w in check_record(record, qa, 0.01) if "moved by" in w]


# -- the night's QA document ------------------------------------------------------------------
def test_qa_document_layout(nights):
    doc = qa_doc(nights)
    assert doc["date"] == DATE and doc["software_version"] == __version__
    assert doc["qa"]["max_median_change"]["bias"] == 5.0
    assert [m["master"] for m in doc["masters"]] == [
        "bias",
        "dark",
        "flat",
        "arclamp_autocal-thar-all-eve",
        "arclamp_autocal-une-sky",
    ]
    for rec in doc["masters"]:
        kind = rec["master"]
        assert rec["file"] == f"kpf_{DATE}_master_{kind}.fits"
        assert set(rec["ccds"]) == set(EXTS[kind])
        with fits.open(rec["path"]) as hdul:
            assert rec["nframes"] == hdul[0].header["NFRAMES"]
            assert rec["cfghash"] == hdul[0].header["CFGHASH"]
            assert [i["l0file"] for i in rec["inputs"]] == list(hdul["INPUTS"].data["L0FILE"])
        assert rec["software_version"] == __version__
        assert rec["qc_source"] == "header"
        assert rec["configuration"]["nsigma"] > 0
        expected_preds = {"bias": [], "dark": ["bias"], "flat": ["bias", "dark"]}
        preds = expected_preds.get(rec["type"], ["bias", "dark", "flat"])
        assert rec["predecessors"] == {p: f"kpf_{DATE}_master_{p}.fits" for p in preds}
        for ext in EXTS[kind]:
            for figure in ("preview", "histograms"):
                png = rec["previews"][ext][figure]
                assert png.endswith(f"/qa/{DATE}/{kind}/{ext}-{figure}.png")
                with Image.open(png) as img:
                    assert img.format == "PNG" and img.width > 300
        # warnings are strings and the night's list gathers every master's
        assert set(rec["warnings"]) <= set(doc["warnings"])
    assert sum(len(m["warnings"]) for m in doc["masters"]) == len(doc["warnings"])


def test_masters_untouched_and_nothing_left_to_do(nights):
    assert {k: md5(nights.master(DATE, k)) for k in KINDS} == nights.before
    assert dry_run_outputs(nights) == []


# -- the Snakemake report ---------------------------------------------------------------------
def test_report_has_every_master_its_previews_and_statistics(nights):
    html = nights.html
    categories = embedded(html, "categories")
    results = embedded(html, "results")
    assert set(categories) == {"night summary"} | {f"master {k}" for k in KINDS}
    for kind in KINDS:
        paths = categories[f"master {kind}"][f"night {DATE}"]
        names = sorted(results[p]["filename"] for p in paths)
        expected = [f"{e}-{f}.png" for e in EXTS[kind] for f in ("histograms", "preview")]
        assert names == sorted(expected + ["master-provenance.html"])
        for path in paths:
            entry = results[path]
            blob = data_of(entry)
            if entry["mime_type"] == "image/png":
                assert blob.startswith(b"\x89PNG\r\n\x1a\n")
                assert entry["labels"]["night"] == DATE
                assert entry["labels"]["figure"] in ("preview", "histograms")
                assert kind in entry["caption"] and entry["labels"]["part"] in entry["caption"]
            else:  # the master's statistics and provenance
                page = blob.decode()
                rec = next(m for m in qa_doc(nights)["masters"] if m["master"] == kind)
                assert f"Provenance of kpf_{DATE}_master_{kind}.fits" in page
                assert all(i["l0file"] in page for i in rec["inputs"])
                assert all(name in page for name in rec["predecessors"].values())
                assert rec["cfghash"] in page and __version__ in page
                assert f"{rec['ccds']['GREEN_CCD']['median']:.4g}" in page
    summary = categories["night summary"][f"night {DATE}"]
    stats = next(results[p] for p in summary if p.endswith("statistics.html"))
    page = data_of(stats).decode()
    doc = qa_doc(nights)
    for rec in doc["masters"]:
        assert f"Provenance of {rec['file']}" in page
        for s in rec["ccds"].values():
            if s["median"] is not None:
                assert f"{s['median']:.4g}" in page
            assert f"{100 * s['rejected_fraction']:.2f}%" in page
    moved = next(w for w in doc["warnings"] if "moved by" in w)
    assert html_escape(moved) in page
    assert json.loads(data_of(next(results[p] for p in summary if p.endswith(".json")))) == doc


# -- units: statistics, previous master, checks, previews --------------------------------------
def test_statistics_of_a_known_stack():
    data = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0]])
    cnt = np.array([[5, 5, 4], [3, 0, 5]], dtype=np.int32)
    headers = [fits.Header({"OSCANV1": 10.0, "OSCANV2": 20.0, "OSCANN1": 3.0, "OSCANN2": 4.0})]
    headers.append(fits.Header({"OSCANV1": 12.0, "OSCANV2": 22.0, "OSCANN1": 5.0}))
    s = ccd_statistics("bias", data, None, cnt, 5, 4, headers, previous_median=1.5)
    assert s["median"] == 3.0 and s["npix_stats"] == 5
    assert s["noise"] == pytest.approx(1.4826 * 1.0)
    assert s["low_count_fraction"] == pytest.approx(2 / 6)
    assert s["rejected_fraction"] == pytest.approx(1 - 22 / 30)
    assert s["overscan_level"] == [11.0, 21.0] and s["read_noise"] == [4.0]
    assert s["median_change"] == 1.5
    cards = {k: v for k, v, _ in qc_cards(s, "kpf_20230605_master_bias.fits")}
    assert cards["QCDMED"] == 1.5 and cards["QCPREV"] == "kpf_20230605_master_bias.fits"
    assert "QCRN2" not in cards and cards["QCOSV2"] == 21.0
    assert all(len(k) <= 8 for k in cards)
    # the flat's statistics cover its normalised pixels only
    unc = np.array([[0.1, 0.0, 0.1], [0.0, 0.0, 0.1]])
    f = ccd_statistics("flat", data, unc, cnt, 5, 4)
    assert f["npix_stats"] == 3 and f["median"] == 3.0 and f["median_change"] is None
    assert "QCPREV" not in {k for k, _, _ in qc_cards(f)}


def test_previous_master_is_the_nearest_earlier_readable_one(tmp_path):
    def put(date, kind="bias", body=None):
        path = tmp_path / date / f"kpf_{date}_master_{kind}.fits"
        path.parent.mkdir(parents=True, exist_ok=True)
        if body is not None:
            path.write_bytes(body)
            return path
        hdu = fits.ImageHDU(np.full((4, 4), float(date[-2:])), name="GREEN_CCD")
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        return path

    for date in ("20230601", "20230603", "20230610"):
        put(date)
    put("20230603", "dark")
    put("20230604", body=b"not a FITS file")
    out = tmp_path / "20230605" / "kpf_20230605_master_bias.fits"
    assert [p.parent.name for p in earlier_masters(out, "20230605")] == [
        "20230604",
        "20230603",
        "20230601",
    ]

    def problem(path):
        try:
            master_medians(path)
            return ""
        except (OSError, ValueError) as exc:
            return str(exc)

    path = previous_master(out, "20230605", problem=problem)  # 20230604 unreadable: skipped
    assert path.name == "kpf_20230603_master_bias.fits"
    assert master_medians(path) == {"GREEN_CCD": 3.0}
    assert previous_master(tmp_path / "elsewhere.fits", "20230605") is None
    first = tmp_path / "20230601" / "kpf_20230601_master_bias.fits"
    assert previous_master(first, "20230601") is None
    # a master this run makes on a nearer earlier night wins, even before it exists
    pending = {"20230604": tmp_path / "20230604" / "x.fits", "20230606": tmp_path / "y.fits"}
    assert previous_master(out, "20230605", pending, problem).name == "x.fits"


def test_previous_master_is_a_declared_input(nights):
    """QCPREV names exactly the file the plan declared as the bias job's input, and a newer
    previous master rebuilds the master (the same inputs give the same bytes)."""
    prev = nights.master(PREV, "bias")
    proc = snakemake(nights, "--dry-run", "--forcerun", "master_bias")
    block = proc.stdout[proc.stdout.index("rule master_bias:") :]
    inputs = re.search(r"^\s+input: (.+)$", block, re.M).group(1).split(", ")
    assert str(prev) in inputs
    assert (
        fits.getheader(nights.master(DATE, "bias"))["QCPREV"]
        == Path(inputs[inputs.index(str(prev))]).name
    )
    original = prev.read_bytes()
    try:
        with fits.open(prev, mode="update") as hdul:  # another previous master: new bytes
            hdul[0].header["NFRAMES"] = 6
        assert f"kpf_{DATE}_master_bias.fits" in dry_run_outputs(nights)
    finally:
        prev.write_bytes(original)
    assert f"kpf_{DATE}_master_bias.fits" not in dry_run_outputs(nights)


def test_checks_on_a_record():
    record = {
        "master": "dark",
        "type": "dark",
        "date": "20230606",
        "previous": "kpf_20230601_master_dark.fits",
        "ccds": {
            "GREEN_CCD": {
                "bunit": "electrons/sec",
                "median": 0.2,
                "median_change": 0.1,
                "rejected_fraction": 0.3,
                "low_count_fraction": 0.005,
                "read_noise": [4.0, 12.5],
            }
        },
    }
    got = check_record(record, QA, 0.01)
    assert len(got) == 3
    assert "moved by +0.1 electrons/sec" in got[0] and "5 day(s) earlier" in got[0]
    assert "30.0% of the stacked samples were rejected" in got[1]
    assert "read noise of AMP2 12.50 e-" in got[2]
    relaxed = merge(QA, {"max_rejected_fraction": 0.5, "max_read_noise": None})
    relaxed["max_median_change"]["dark"] = 0.5
    assert check_record(record, relaxed, 0.01) == []
    record["ccds"]["GREEN_CCD"]["low_count_fraction"] = 0.02
    assert "INFOBITS set" in check_record(record, relaxed, 0.01)[0]


def test_block_average_and_display_factor():
    image = np.arange(25, dtype=float).reshape(5, 5)
    image[0, 0] = np.nan
    out = block_average(image, 2)
    assert out.shape == (3, 3)
    assert out[0, 0] == pytest.approx(np.mean([1, 5, 6]))  # NaN ignored
    assert out[2, 2] == 24.0  # a partial corner block
    assert display_factor((4080, 4080), 512) == 8 and display_factor((64, 64), 512) == 1


def test_preview_keeps_fits_orientation(tmp_path):
    """Row 0 at the bottom: a bright top half of the array is the top half of the PNG."""
    image = np.zeros((200, 100))
    image[100:, :] = 100.0
    image += np.random.default_rng(1).normal(0, 1, image.shape)
    shown = render_preview(image, tmp_path / "p.png", "title", "electrons", max_pixels=64)
    assert shown["factor"] == 4 and shown["shape"] == [200, 100]
    with Image.open(tmp_path / "p.png") as img:
        grey = np.asarray(img.convert("L"), dtype=float)
    # rows of the PNG crossing the dark (row < 100) half of the image: in the lower half
    dark_rows = np.flatnonzero((grey < 40).sum(axis=1) > 100)
    assert dark_rows.size > 100
    assert np.median(dark_rows) > grey.shape[0] / 2
    assert (tmp_path / "p.png").stat().st_size < 100_000


def test_qa_configuration_defaults_and_validation():
    from kpfmasters.core.errors import ConfigError

    cfg = load_config(overrides={"date": DATE, "qa": {"max_median_change": {"dark": 1.0}}})
    assert cfg["qa"]["max_median_change"] == {**QA["max_median_change"], "dark": 1.0}
    for bad in ({"max_rejected_fraction": 2}, {"max_median_change": {"bias": -1}}, {"x": 1}):
        with pytest.raises(ConfigError, match="qa"):
            load_config(overrides={"date": DATE, "qa": bad})


def test_qa_never_fails_on_odd_records(tmp_path, caplog):
    """Inputs without MJD-OBS/EXPTIME (NaN in INPUTS) and an unreadable master still give
    pages, a record with an error and a warning, and no exception."""
    from kpfmasters.qa.figures import master_page, master_previews, night_page
    from kpfmasters.qa.records import assessed_record

    broken = tmp_path / DATE / f"kpf_{DATE}_master_bias.fits"
    broken.parent.mkdir()
    broken.write_bytes(b"SIMPLE  =  not really")
    record = assessed_record(broken, QA, 0.01)
    assert record["error"] and record["warnings"][0].startswith(f"QA of {broken.name} failed")
    assert "QA of" in caplog.text
    assert f"Provenance of {broken.name}" in master_page(record)
    doc = {"date": DATE, "masters": [record], "warnings": record["warnings"]}
    assert "1 QA warning(s)" in night_page(doc)
    with pytest.raises(OSError):
        master_previews(
            broken, tmp_path / "out", QA["preview_max_pixels"], 10
        )  # the script logs this and goes on
    odd = {
        "master": "bias",
        "file": "x.fits",
        "ccds": {"GREEN_CCD": {"median": None, "read_noise": [None, 3.0]}},
        "inputs": [{"filename": "a", "l0file": "b", "mjd_obs": None, "exptime": None}],
    }
    odd["inputs"][0]["used"] = False
    page = master_page(odd)
    assert "<td>-</td><td>-</td>" in page and "-, 3.00" in page
