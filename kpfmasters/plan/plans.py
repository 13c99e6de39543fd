"""What the Snakemake rules ask of a night: targets, inputs, parameters and resources.

:class:`Plans` holds one :class:`~kpfmasters.plan.selection.NightPlan` per night (headers scanned
once, through the night's index file) and answers the input functions of ``rules/*.smk``.
It is plain Python so the workflow's decisions are tested without Snakemake.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import os
import time
from pathlib import Path

from astropy.io import fits

from kpfmasters import __version__
from kpfmasters.core.config import config_hash
from kpfmasters.core.errors import InputError, KPFMastersError, NoPredecessorError
from kpfmasters.core.naming import (
    MASTER_NAME_RE,
    TRACE_CCDS,
    l1_name,
    l2_name,
    master_kind,
    master_name,
    trace_name,
    two_d_name,
    wls_name,
)
from kpfmasters.core.products import product
from kpfmasters.io.files import file_identity
from kpfmasters.io.fits import atomic_output, check_complete, verify_checksums
from kpfmasters.plan.night import scan_night
from kpfmasters.plan.predecessors import Candidate, masters_on_disk, nearest
from kpfmasters.plan.previous import previous_master
from kpfmasters.plan.rejects import apply_rejections, night_rejections, rejects_dir
from kpfmasters.plan.selection import NightPlan, Selection, plan_night, selection_keywords


def canonical(value):
    """``value`` with every mapping's keys sorted, recursively.

    Snakemake compares rule parameters by their text, so the same settings written in
    another key order (another configuration file) must not look like a change.
    """
    return json.loads(json.dumps(value, sort_keys=True))


PLANNED_KEYS = ("IMTYPE", "EXPTIME", "MJD-OBS")


def derived_products(date: str, master: str) -> list[str]:
    """Names of the files made from 2D master ``master`` of night ``date``: its L1, and for
    an arclamp its wavelength solution and L2, for the flat its two trace files. They go
    (are retired) with it."""
    kind = master_kind(master) or ""
    names = [l1_name(master)]
    if kind.startswith("arclamp_"):
        tag = kind[len("arclamp_") :]
        names += [wls_name(date, tag), l2_name(date, tag)]
    if kind == "flat":
        names += [trace_name(date, ccd) for ccd in TRACE_CCDS]
    return names


class Plans:
    """Per-night selection plans and the answers the rules need from them.

    ``cfg`` is a normalised configuration (:func:`kpfmasters.core.config.normalize_config`);
    ``log`` has ``info``/``warning``/``error`` (Snakemake's logger in the workflow).
    Selection lines are logged once per night, in the main process only.

    With the calibration database, ``db_lookup(date, mtype, max_age_days, min_frames)``
    gives a 2D predecessor master (:func:`database_lookup`) and
    ``trace_lookup(date, max_age_days, min_frames)`` an earlier night's order traces
    (:func:`database_traces`) in place of the masters on disk.
    """

    def __init__(
        self,
        cfg: dict,
        main_process: bool = True,
        log=None,
        db_lookup=None,
        readonly: bool = False,
        trace_lookup=None,
    ):
        self.cfg = cfg
        self.main_process = main_process
        self.readonly = readonly  # only show: write nothing (no index, no verdict cache)
        self.log = log
        self.db_lookup = db_lookup
        self.trace_lookup = trace_lookup
        self._registered_traces: dict[str, tuple[str, dict[str, Path]] | str] = {}
        self._plans: dict[str, NightPlan] = {}
        self._reported: set[str] = set()
        self._unusable: dict[Path, str] = {}
        self._verified: dict[str, dict] | None = None  # loaded on first use
        self._no_trace_reported: set[str] = set()
        self._no_wls_reported: set[str] = set()
        self._stamped: set[str] = set()  # nights whose stamps are written
        self._stamps: set[Path] = set()  # the stamps written

    # -- paths -----------------------------------------------------------------------------
    def index_path(self, date: str) -> str:
        return f"{self.cfg['work_root']}/index/{date}.json"

    def master_path(self, date: str, mtype: str, tag: str | None = None) -> str:
        obj = self.selection(date, "arclamp", tag).obj if mtype == "arclamp" else None
        return f"{self.cfg['masters_root']}/{date}/{master_name(date, mtype, obj)}"

    def twod_path(self, date: str, l0_name: str) -> str:
        return f"{self.cfg['work_root']}/2D/{date}/{two_d_name(l0_name)}"

    def amp_geometry(self) -> dict:
        amp = self.cfg["amplifier"]
        return {
            "prescan": amp["prescan"],
            "serial_overscan": amp["serial_overscan"],
            "parallel_overscan": amp["parallel_overscan"],
            "edge_skip": amp["overscan_edge_skip"],
            "nsigma": amp["overscan_nsigma"],
            "flip_2amp": list(amp["flip_updown"]["two_amp"]),
            "flip_4amp": list(amp["flip_updown"]["four_amp"]),
        }

    # -- plans -----------------------------------------------------------------------------
    def plan(self, date: str) -> NightPlan:
        if date not in self._plans:
            frames, ignored = scan_night(
                self.cfg["l0_root"],
                date,
                self.index_path(date),
                self.amp_geometry(),
                selection_keywords(self.cfg),
                write=not self.readonly,
            )
            apply_rejections(frames, self.cfg["work_root"], date)
            self._plans[date] = plan_night(frames, ignored, date, self.cfg)
        return self._plans[date]

    def night_rejects(self, date: str) -> list[dict]:
        """The night's rejects (:func:`kpfmasters.plan.rejects.night_rejections`)."""
        return night_rejections(self.cfg["work_root"], self.cfg["l0_root"], date)

    def selection(self, date: str, mtype: str, tag: str | None = None) -> Selection:
        sel = self.plan(date).get(mtype, tag if mtype == "arclamp" else None)
        if sel is None:
            what = f"arclamp with OBJECT tag {tag!r}" if mtype == "arclamp" else mtype
            raise KPFMastersError(f"night {date} has no {what} frames")
        return sel

    def frames_2d(self, date: str, mtype: str, tag: str | None = None) -> list[str]:
        sel = self.selection(date, mtype, tag)
        if not sel.buildable:
            raise KPFMastersError(sel.why_not())
        return [self.twod_path(date, f.name) for f in sel.used]

    def blocked(self, mtype: str) -> str:
        """Why no master ``mtype`` can be made in this run at all ('' when it can): the flat
        needs the order mask file (a missing one would stop Snakemake building anything)."""
        if mtype == "flat" and not Path(self.cfg["order_mask"]).is_file():
            return (
                f"the order mask {self.cfg['order_mask']} does not exist (expected the "
                "order-trace mask FITS file of configuration key order_mask)"
            )
        return ""

    def makes(self, date: str, mtype: str) -> bool:
        """Whether this run makes ``date``'s own master ``mtype`` (bias, dark or flat)."""
        return self.selection(date, mtype).buildable and not self.blocked(mtype)

    def predecessor(self, date: str, mtype: str) -> str:
        """Path of the master ``mtype`` that ``date``'s later masters are calibrated with."""
        if self.makes(date, mtype):
            return self.master_path(date, mtype)
        max_age = self.cfg["predecessors"]["max_age_days"]
        if self.db_lookup is not None:
            # the same rule as on disk: a master of at least min_frames frames
            return str(self.db_lookup(date, mtype, max_age, self.cfg["min_frames"]))
        candidates = {c.date: c for c in masters_on_disk(self.cfg["masters_root"], mtype)}
        for night in self.cfg["nights"]:
            if night not in candidates and night != date:
                if self.makes(night, mtype):
                    path = Path(self.master_path(night, mtype))
                    candidates[night] = Candidate(night, path, pending=True)
        found = nearest(date, mtype, list(candidates.values()), max_age, self._disk_problem)
        return str(found.path)

    def previous_master(self, date: str, mtype: str, tag: str | None = None) -> list[str]:
        """The master a new master's QC compares with (:mod:`kpfmasters.plan.previous`):
        ``[path]`` of the nearest earlier night's master of the same kind, on disk and
        readable or made by this run, else ``[]``. Declared as the job's input."""
        output = self.master_path(date, mtype, tag)
        pending = {}
        for night in self.cfg["nights"]:
            if night < date:
                sel = self.plan(night).get(mtype, tag if mtype == "arclamp" else None)
                if sel is not None and sel.buildable and not self.blocked(mtype):
                    pending[night] = Path(self.master_path(night, mtype, tag))
        found = previous_master(
            output, date, pending, lambda p: self._disk_problem(Candidate(p.parent.name, p))
        )
        return [str(found)] if found else []

    def _disk_problem(self, cand: Candidate) -> str:
        """Why a master on disk cannot be a predecessor ('' if it can); logged once.

        Headers, sizes and every HDU's CHECKSUM/DATASUM are checked, so a damaged master is
        passed over for the next nearest instead of failing the job that would read it. The
        verdict is remembered per file version (see :meth:`_verified_problem`), so a
        master is read once, not at every DAG build.
        """
        if cand.path not in self._unusable:
            problem = self._verified_problem(cand.path)
            self._unusable[cand.path] = problem
            if problem and self.main_process and self.log:
                self.log.warning(f"master {cand.path}: {problem}; not used as a predecessor")
        return self._unusable[cand.path]

    def verified_path(self) -> Path:
        """``<work_root>/index/verified_masters.json``: checked masters and their verdicts."""
        return Path(self.cfg["work_root"]) / "index" / "verified_masters.json"

    def _verified_problem(self, path: Path) -> str:
        """'' when ``path`` is a complete FITS file whose checksums match, else the problem.

        A verdict is remembered for the file version (size, mtime, ctime, inode: a rewrite,
        a rename over it or a chmod makes it a new one); a failure of the system (permission
        denied, an I/O error) is not remembered, so it is retried once the cause is fixed.
        """
        try:
            stat = path.stat()
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        version = file_identity(stat)
        if self._verified is None:
            try:
                loaded = json.loads(self.verified_path().read_text())
            except (OSError, ValueError):
                loaded = None
            self._verified = loaded if isinstance(loaded, dict) else {}
        entry = self._verified.get(str(path))
        if isinstance(entry, dict) and entry.get("version") == version:
            return str(entry.get("problem", ""))
        try:
            check_complete(path)
            verify_checksums(path)
            problem = ""
        except InputError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno is not None:
                return exc.problem  # the system's failure, not the file's: not remembered
            problem = exc.problem
        self._verified[str(path)] = {"version": version, "problem": problem}
        if self.readonly:
            return problem
        try:
            with atomic_output(self.verified_path()) as tmp:
                Path(tmp).write_text(json.dumps(self._verified, indent=1, sort_keys=True))
        except OSError:  # a read-only work area only costs the check again next time
            pass
        return problem

    def cfghash(self, mtype: str) -> str:
        """``CFGHASH`` a master ``mtype`` made now gets: the settings that shape it."""
        effective = {
            "master": self.cfg["masters"][mtype],
            "amplifier": self.cfg["amplifier"],
            "adc_scale": self.cfg["adc_scale"],
            "min_frames": self.cfg["min_frames"],
            "flag_fraction": self.cfg["flag_fraction"],
        }
        return config_hash(__version__, effective)

    # -- stamps ----------------------------------------------------------------------------
    @property
    def _writes_stamps(self) -> bool:
        """Stamps are written by the main process of a run that may write."""
        return self.main_process and not self.readonly

    def _settings_stamp_path(self, date: str, mtype: str, tag: str | None) -> Path:
        master = Path(self.master_path(date, mtype, tag))
        return Path(self.cfg["work_root"]) / "settings" / date / f"{master.stem}.json"

    def _identity_stamp_path(self, date: str, stem: str) -> Path:
        return Path(self.cfg["work_root"]) / "2D" / date / ".identity" / f"{stem}.json"

    def stamp_night(self, date: str) -> None:
        """Write every settings and identity stamp of ``date`` at once (main process, once).

        Snakemake lists a folder the first time it checks a file in it and trusts that
        listing for the rest of the DAG, so a stamp written in the folder after the first
        look would read as missing: all of a night's stamps exist before any is returned.
        """
        if date in self._stamped or not self._writes_stamps:
            return
        self._stamped.add(date)
        stems = set()
        for sel in self.plan(date).selections.values():
            if sel.buildable:
                self._write_settings_stamp(date, sel.mtype, sel.tag)
                stems.update(f.stem for f in sel.used)
        for stem in sorted(stems):
            self._write_identity_stamp(date, stem)

    def settings_stamp(self, date: str, mtype: str, tag: str | None = None) -> str:
        """An input of every master: ``<work_root>/settings/<date>/<master>.json``, holding
        the ``CFGHASH`` and ``SOFTVER`` the rule would write.

        When the master on disk carries other values (the settings or the software changed,
        whichever way the night was made: ``daily``, a plain run, another work root), the
        stamp is dated now, newer than the master, so Snakemake rebuilds it; when the master
        agrees, the stamp is dated before it. Written in the main process only, with the
        night's other stamps (:meth:`stamp_night`).
        """
        self.stamp_night(date)
        stamp = self._settings_stamp_path(date, mtype, tag)
        if stamp not in self._stamps and self._writes_stamps:
            self._write_settings_stamp(date, mtype, tag)  # a master the plan cannot make
        return str(stamp)

    def _write_settings_stamp(self, date: str, mtype: str, tag: str | None) -> None:
        master = Path(self.master_path(date, mtype, tag))
        stamp = self._settings_stamp_path(date, mtype, tag)
        self._stamps.add(stamp)
        want = {"CFGHASH": self.cfghash(mtype), "SOFTVER": __version__}
        try:
            made = master.stat()
            header = fits.getheader(master, 0)
            agrees = all(str(header.get(k, "")) == v for k, v in want.items())
        except (OSError, ValueError):
            made, header, agrees = None, None, True  # no master (or unreadable): made anyway
        content = dict(want)
        if not agrees:
            # Name the master version it replaces: a stamp whose text Snakemake recorded for
            # another build (its metadata elsewhere) must not read as unchanged.
            content["replaces"] = [made.st_size, made.st_mtime_ns]
        text = json.dumps(content, sort_keys=True) + "\n"
        try:
            have = stamp.read_text()
        except OSError:
            have = None
        if have != text:
            with atomic_output(stamp) as tmp:
                Path(tmp).write_text(text)
        if made is None:
            return
        ns = stamp.stat().st_mtime_ns
        if agrees and ns >= made.st_mtime_ns:
            old = made.st_mtime_ns - 1_000_000_000
            os.utime(stamp, ns=(old, old))
        elif not agrees:
            if ns <= made.st_mtime_ns:
                now = max(time.time_ns(), made.st_mtime_ns + 1_000_000_000)
                os.utime(stamp, ns=(now, now))
            if self.log:
                self.log.info(
                    f"{master.name}: made with CFGHASH {header.get('CFGHASH')!r} SOFTVER "
                    f"{header.get('SOFTVER')!r}, the rule now writes {want['CFGHASH']!r} "
                    f"{want['SOFTVER']!r}: rebuilt"
                )

    def identity_stamp(self, date: str, stem: str) -> str:
        """An input of the 2D job: ``<work_root>/2D/<date>/.identity/<stem>.json`` holding
        the L0 file's ``[size, mtime_ns, ctime_ns, inode]`` as scanned.

        A file re-delivered with an older time (``rsync -t``, ``cp -p``) or replaced in
        place has another identity: the stamp is rewritten, dated now, and the 2D file is
        made again; an unchanged identity leaves the stamp (dated before the 2D file) alone,
        so the L0 file's own time, past or future, never decides. Main process only.
        """
        self.stamp_night(date)
        stamp = self._identity_stamp_path(date, stem)
        if stamp not in self._stamps and self._writes_stamps:
            self._write_identity_stamp(date, stem)  # a frame no master uses
        return str(stamp)

    def _write_identity_stamp(self, date: str, stem: str) -> None:
        stamp = self._identity_stamp_path(date, stem)
        self._stamps.add(stamp)
        text = json.dumps(self._frame(date, stem).identity) + "\n"
        try:
            have = stamp.read_text()
        except OSError:
            have = None
        if have == text:
            return
        with atomic_output(stamp) as tmp:
            Path(tmp).write_text(text)
        two_d = Path(self.twod_path(date, f"{stem}.fits"))
        if have is None and two_d.is_file():
            # first stamp of a 2D file made before stamps existed: taken as made from it
            old = two_d.stat().st_mtime_ns - 1_000_000_000
            os.utime(stamp, ns=(old, old))

    def planned_header(self, date: str, stem: str) -> dict:
        """The header values the plan used (IMTYPE, EXPTIME, MJD-OBS); the 2D job checks
        the file it reads still has them."""
        header = self._frame(date, stem).header
        return {k: header.get(k) for k in PLANNED_KEYS}

    def _frame(self, date: str, stem: str):
        for frame in self.plan(date).frames:
            if frame.stem == stem:
                return frame
        raise KPFMastersError(f"night {date} has no L0 file {stem}.fits")

    def future_files(self, date: str) -> list[str]:
        """Log lines naming L0 files whose modification time lies in the future."""
        now = time.time_ns()
        out = []
        for frame in self.plan(date).frames:
            if frame.mtime_ns > now + 60 * 10**9:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(frame.mtime_ns / 1e9))
                out.append(
                    f"L0 file {frame.path} has a modification time in the future ({when}); "
                    "converted anyway (its identity, not its time, decides a rerun)"
                )
        return out

    def stale_masters(self, date: str) -> list[str]:
        """Masters of ``date`` on disk that the night's frames no longer make (their frames
        were reclassified or removed). A master held back for another reason (no order
        mask, no predecessor) is not stale: its frames still make it."""
        night = Path(self.cfg["masters_root"]) / date
        if not night.is_dir():
            return []
        plan = self.plan(date)
        keep = {
            Path(self.master_path(date, sel.mtype, sel.tag)).name
            for sel in plan.selections.values()
            if sel.buildable
        }
        stale = [
            p
            for p in night.glob(f"kpf_{date}_master_*.fits")
            if MASTER_NAME_RE.match(p.name) and p.name not in keep
        ]
        derived = [night / name for p in stale for name in derived_products(date, p.name)]
        return sorted(str(p) for p in [*stale, *derived] if p.is_file())

    def retire_target(self, date: str) -> str | None:
        """The receipt of moving ``date``'s stale masters aside (None when there are none):
        its name carries a digest of the list, so a new stale master is a new target."""
        stale = self.stale_masters(date)
        if not stale:
            return None
        digest = config_hash([Path(p).name for p in stale])
        return f"{self.cfg['work_root']}/retired/{date}/{digest}.json"

    def master_params(self, date: str, mtype: str, tag: str | None = None) -> dict:
        sel = self.selection(date, mtype, tag)
        settings = self.cfg["masters"][mtype]
        return canonical(
            {
                "mtype": mtype,
                "obj": sel.obj,
                "rows": sel.rows(),
                "settings": settings,
                "flag_fraction": self.cfg["flag_fraction"],
                "version": __version__,
                "cfghash": self.cfghash(mtype),
            }
        )

    # -- order traces and L1 ----------------------------------------------------------------
    def makes_flat(self, date: str) -> bool:
        """Whether this run makes ``date``'s master flat (so its trace files too)."""
        try:
            return self.master_path(date, "flat") in self.night_targets(date)
        except KPFMastersError:
            return False

    def own_traces(self, date: str) -> dict[str, str]:
        """CCD -> the trace file ``date``'s own master flat gives."""
        root = self.cfg["masters_root"]
        return {ccd: f"{root}/{date}/{trace_name(date, ccd)}" for ccd in TRACE_CCDS}

    def trace_files(self, date: str) -> dict[str, str]:
        """CCD -> the trace file ``date``'s L1 products use: the night's own when it makes a
        flat, else the nearest earlier night's within ``predecessors.max_age_days``: one made
        by this run, or one on disk (with the database, a registered one instead:
        :meth:`_traces_registered`). Raises :class:`NoPredecessorError` when none."""
        if self.makes_flat(date):
            return self.own_traces(date)
        max_age = self.cfg["predecessors"]["max_age_days"]
        if self.trace_lookup is not None:
            return self._traces_registered(date, max_age)
        candidates = {**self._traces_pending(date), **self._traces_on_disk(date)}
        try:
            found = nearest(date, "order trace", list(candidates.values()), max_age)
        except NoPredecessorError as exc:
            raise NoPredecessorError(f"{exc} (earlier nights only)") from None
        return self.own_traces(found.date)

    def _traces_pending(self, date: str) -> dict[str, Candidate]:
        """Night -> its GREEN trace file, for this run's nights before ``date`` that make a
        flat (not made yet, so never checked)."""
        return {
            night: Candidate(night, Path(self.own_traces(night)[TRACE_CCDS[0]]), pending=True)
            for night in self.cfg["nights"]
            if night < date and self.makes_flat(night)
        }

    def _traces_on_disk(self, date: str) -> dict[str, Candidate]:
        """Night -> its GREEN trace file, for the nights before ``date`` under masters_root
        with the trace files of both CCDs."""
        root = Path(self.cfg["masters_root"])
        found = {}
        if root.is_dir():
            for night in root.iterdir():
                if night.name.isdigit() and len(night.name) == 8 and night.name < date:
                    paths = [night / trace_name(night.name, ccd) for ccd in TRACE_CCDS]
                    if all(p.is_file() for p in paths):
                        found[night.name] = Candidate(night.name, paths[0])
        return found

    def _traces_registered(self, date: str, max_age: int | None) -> dict[str, str]:
        """CCD -> trace file for ``date`` with the database: the nearer of the registered
        traces (``trace_lookup``: both CCDs of one earlier night, each file with its
        registered MD5) and this run's earlier nights that make a flat (one of these wins a
        tie: it is the night's traces as this run makes them)."""
        found = self._lookup_traces(date, max_age)
        candidates = self._traces_pending(date)
        if not isinstance(found, str):
            night, paths = found
            candidates.setdefault(night, Candidate(night, paths[TRACE_CCDS[0]]))
        try:
            best = nearest(date, "order trace", list(candidates.values()), max_age)
        except NoPredecessorError as exc:
            raise NoPredecessorError(
                f"{exc} (earlier nights of this run only); in the database: {found}"
            ) from None
        if best.pending:
            return self.own_traces(best.date)
        return {ccd: str(path) for ccd, path in found[1].items()}

    def _lookup_traces(self, date: str, max_age: int | None) -> tuple[str, dict[str, Path]] | str:
        """``trace_lookup``'s answer for ``date``: (night, CCD -> path), or why there is none.

        Asked once per night and kept: the L1 rules' inputs and targets ask for a night's
        traces many times while the DAG is built."""
        if date not in self._registered_traces:
            try:
                answer = self.trace_lookup(date, max_age, self.cfg["min_frames"])
            except KPFMastersError as exc:  # none qualifies, or the database is unreachable:
                answer = str(exc)  # the night's L1 are not made (logged), its masters are
            self._registered_traces[date] = answer
        return self._registered_traces[date]

    def trace_params(self) -> dict:
        return canonical(self.cfg["traces"])

    def l1_params(self, date: str) -> dict:
        """What an L1 product is made with (a change rebuilds it)."""
        effective = {
            "l1": self.cfg["l1"],
            "wls": {"reference": self.cfg["wls"]["reference"]},
            "traces": self.cfg["traces"],
        }
        return canonical(
            {
                "method": self.cfg["l1"]["method"],
                "wls": self.cfg["wls"]["reference"],
                "version": __version__,
                "cfghash": config_hash(__version__, effective),
            }
        )

    def wls_reference(self) -> list[str]:
        """The reference wavelength file as a rule input ([] when none is configured)."""
        ref = self.cfg["wls"]["reference"]
        return [ref] if ref else []

    def l1_targets(self, date: str) -> list[str]:
        """The L1 file of every master ``date`` makes, when it has traces (else logged)."""
        masters = self.night_targets(date)
        if not masters:
            return []
        try:
            self.trace_files(date)
        except NoPredecessorError as exc:
            if self.main_process and self.log and date not in self._no_trace_reported:
                self.log.error(f"no L1 products for {date}: {exc}")
            self._no_trace_reported.add(date)
            return []
        return [str(Path(m).with_name(l1_name(Path(m).name))) for m in masters]

    def trace_targets(self, date: str) -> list[str]:
        """The night's own trace files (when it makes a master flat)."""
        return list(self.own_traces(date).values()) if self.makes_flat(date) else []

    # -- wavelength solutions and arclamp L2 --------------------------------------------------
    def wls_kind(self, obj: str) -> str | None:
        """``thar`` or ``lfc`` when an arclamp OBJECT matches the configured patterns (shell
        patterns, case ignored; ThAr first), else None."""
        low = obj.lower()
        for kind in ("thar", "lfc"):
            if any(
                fnmatch.fnmatchcase(low, pat.lower()) for pat in self.cfg["wls"][f"{kind}_objects"]
            ):
                return kind
        return None

    def wls_sources(self, date: str) -> list[tuple[str, str, str]]:
        """(tag, OBJECT, kind) of every arclamp master ``date`` makes whose OBJECT is a ThAr
        or comb lamp and which has an L1 file; none without a reference solution (logged)."""
        l1s = set(self.l1_targets(date))
        out = []
        for sel in self.plan(date).selections.values():
            if sel.mtype != "arclamp" or sel.obj is None:
                continue
            kind = self.wls_kind(sel.obj)
            master = self.master_path(date, "arclamp", sel.tag)
            if kind is None or str(Path(master).with_name(l1_name(Path(master).name))) not in l1s:
                continue
            out.append((sel.tag, sel.obj, kind))
        if out and not self.cfg["wls"]["reference"]:
            if self.main_process and self.log and date not in self._no_wls_reported:
                self.log.warning(
                    f"no wavelength solutions or arclamp L2 for {date}: no reference solution "
                    "(configuration key wls.reference) to serve as the prior"
                )
            self._no_wls_reported.add(date)
            return []
        return sorted(out)

    def wls_path(self, date: str, tag: str) -> str:
        return f"{self.cfg['masters_root']}/{date}/{wls_name(date, tag)}"

    def l2_path(self, date: str, tag: str) -> str:
        return f"{self.cfg['masters_root']}/{date}/{l2_name(date, tag)}"

    def wls_targets(self, date: str) -> list[str]:
        return [self.wls_path(date, tag) for tag, _, _ in self.wls_sources(date)]

    def l2_targets(self, date: str) -> list[str]:
        return [self.l2_path(date, tag) for tag, _, _ in self.wls_sources(date)]

    def wls_source(self, date: str, tag: str) -> tuple[str, str, str]:
        for source in self.wls_sources(date):
            if source[0] == tag:
                return source
        raise KPFMastersError(f"arclamp {tag!r} of {date} has no wavelength solution to make")

    def wls_prior(self, date: str, tag: str) -> list[str]:
        """The prior of a solution as a rule input: for the comb, the night's first ThAr
        solution (by OBJECT tag) when the night makes one; otherwise [] (the prior is the
        arclamp L1's own WAVE, the reference solution)."""
        _, _, kind = self.wls_source(date, tag)
        if kind == "lfc":
            thar = [t for t, _, k in self.wls_sources(date) if k == "thar"]
            if thar:
                return [self.wls_path(date, thar[0])]
        return []

    def wls_params(self, date: str, tag: str) -> dict:
        """What a wavelength solution is made with (a change rebuilds it)."""
        _, obj, kind = self.wls_source(date, tag)
        settings = {k: v for k, v in self.cfg["wls"].items() if k != "reference"}
        return canonical(
            {
                "kind": kind,
                "object": obj,
                "settings": settings,
                "version": __version__,
                "cfghash": config_hash(__version__, kind, settings),
            }
        )

    def wls_linelist(self, date: str, tag: str) -> list[str]:
        """The ThAr line list as a rule input of a ThAr solution ([] for the comb)."""
        from kpfmasters.core.config import REPO_ROOT

        _, _, kind = self.wls_source(date, tag)
        if kind != "thar":
            return []
        path = Path(self.cfg["wls"]["thar_linelist"])
        return [str(path if path.is_absolute() else REPO_ROOT / path)]

    def previous_wls(self, date: str, tag: str) -> list[str]:
        """The nearest earlier night's solution of the same lamp (on disk, or made by this
        run) within ``qa.max_previous_age_days``, as a QA input ([] when none)."""
        max_age = (self.cfg.get("qa") or {}).get("max_previous_age_days")
        root = Path(self.cfg["masters_root"])
        candidates = {}
        if root.is_dir():
            for night in root.iterdir():
                if night.name.isdigit() and len(night.name) == 8 and night.name < date:
                    path = night / wls_name(night.name, tag)
                    if path.is_file():
                        candidates[night.name] = path
        for night in self.cfg["nights"]:
            if night < date and night not in candidates:
                if any(t == tag for t, _, _ in self.wls_sources(night)):
                    candidates[night] = Path(self.wls_path(night, tag))
        if not candidates:
            return []
        best = max(candidates)
        age = (dt.date.fromisoformat(f"{date[:4]}-{date[4:6]}-{date[6:]}")
               - dt.date.fromisoformat(f"{best[:4]}-{best[4:6]}-{best[6:]}")).days  # fmt: skip
        if max_age is not None and age > max_age:
            return []
        return [str(candidates[best])]

    def wls_mem_mb(self, date: str, attempt: int = 1) -> int:
        """A solution holds the L1 (2 x 15 images of orders x columns, float64), the line
        windows and the fits: bench/bench_wls.py measures about 0.5 GB for a whole night."""
        npix, _ = self._pixels(self.plan(date).frames)
        return int((400 + 16 * npix / 2**20) * attempt)

    def night_products(self, date: str) -> list[str]:
        """Everything the night's registration records: masters, trace files, L1 files,
        wavelength solutions and arclamp L2 files."""
        return (
            self.night_targets(date)
            + self.trace_targets(date)
            + self.l1_targets(date)
            + self.wls_targets(date)
            + self.l2_targets(date)
        )

    # -- targets ---------------------------------------------------------------------------
    def night_targets(self, date: str) -> list[str]:
        """Every master of ``date`` that can be made; logs why any other is not made."""
        plan = self.plan(date)
        report = self.main_process and date not in self._reported
        self._reported.add(date)
        if report and self.log:
            for line in plan.log_lines():
                self.log.info(line)
            for line in self.future_files(date):
                self.log.warning(line)
            for path in self.stale_masters(date):
                self.log.warning(
                    f"master {path} can no longer be made from the night's frames: moved "
                    f"aside to {self.cfg['work_root']}/retired/{date}/ and its row removed"
                )
        if not plan.frames:
            if report and self.log:
                self.log.warning(f"night {date}: no L0 files under {self.cfg['l0_root']}/{date}")
            return []
        targets = []
        for sel in plan.selections.values():
            if not sel.buildable:
                if report and self.log:
                    self.log.warning(sel.why_not())
                continue
            if self.blocked(sel.mtype):
                if report and self.log:
                    self.log.error(
                        f"master {sel.label} for {date} not made: {self.blocked(sel.mtype)}"
                    )
                continue
            try:
                for needed in product(sel.mtype).predecessors:
                    self.predecessor(date, needed)
            except NoPredecessorError as exc:
                if report and self.log:
                    self.log.error(f"master {sel.label} for {date} not made: {exc}")
                continue
            targets.append(self.master_path(date, sel.mtype, sel.tag))
        return targets

    def all_targets(self) -> list[str]:
        out = []
        for date in self.cfg["nights"]:
            masters = self.night_targets(date)
            out.extend(masters)
            out.extend(self.trace_targets(date))
            out.extend(self.l1_targets(date))
            out.extend(self.wls_targets(date))
            out.extend(self.l2_targets(date))
            retire = self.retire_target(date)
            if retire:
                out.append(retire)
            if masters or retire:
                out.append(f"{self.cfg['work_root']}/selection/{date}.txt")
                if self.cfg["database"]["enabled"]:
                    out.append(f"{self.cfg['work_root']}/registered/{date}.json")
        return out

    # -- resources -------------------------------------------------------------------------
    def _pixels(self, frames) -> tuple[int, int]:
        """(largest CCD pixel count, number of CCD-like extensions) over ``frames``."""
        npix, next_ = 0, 0
        for frame in frames:
            sizes = [r * c for r, c in frame.ccd_shapes.values()]
            if sizes:
                npix = max(npix, max(sizes))
                next_ = max(next_, len(sizes))
        return npix, next_

    def l0_mem_mb(self, date: str, stem: str, attempt: int = 1) -> int:
        frames = [f for f in self.plan(date).frames if f.stem == stem]
        npix, _ = self._pixels(frames)
        return int((300 + 24 * npix / 2**20) * attempt)

    def stack_mem_mb(self, date: str, mtype: str, tag: str | None, attempt: int = 1) -> int:
        """Declared memory of a master job (MiB): the band buffer, then per full-size CCD
        (GREEN, RED; CA_HK is small) the held outputs, the predecessor images and, for the
        flat, its normalisation images. Measured peaks at 4080 x 4080 (bench/night.sh):
        bias ~0.85-1.06 GiB, dark ~0.95-1.25, flat ~1.4, arclamp ~1.35; declared: 1.04, 1.29,
        2.03, 1.78 GiB."""
        sel = self.selection(date, mtype, tag)
        npix, next_ = self._pixels(sel.used)
        kind = product(mtype)
        per_ext = 16 + 8 * len(kind.predecessors) + 8 * len(kind.extra_images)
        band = self.cfg["stack"]["memory_mb"]
        # each gathering thread widens float32 rows in a scratch band: half a frame's share
        scratch = band * self.cfg["stack"]["threads"] / (2 * max(len(sel.used), 1))
        fixed = 300 + band + min(scratch, band)
        return int((fixed + per_ext * min(max(next_, 1), 2) * npix / 2**20) * attempt)

    def qa_mem_mb(self, date: str, attempt: int = 1) -> int:
        """Previews and statistics of one master: ~1.2 GB measured at 4080 x 4080 per CCD."""
        npix, _ = self._pixels(self.plan(date).frames)
        return int((300 + 64 * npix / 2**20) * attempt)

    def trace_mem_mb(self, date: str, attempt: int = 1) -> int:
        """Order traces of both CCDs, one at a time: the stack (float32), the mask and the
        labels (int32) and the per-value boolean images; 418 MiB peak measured at 4080 x 4080
        in KPF's trace geometry (bench/bench_l1.py)."""
        npix, _ = self._pixels(self.plan(date).frames)
        return int((300 + 20 * npix / 2**20) * attempt)

    def l1_mem_mb(self, date: str, attempt: int = 1) -> int:
        """One L1: the master memory-mapped (its pages count), a native copy of each image
        extracted, the spectra; 908 MiB peak measured for the flat's L1 at 4080 x 4080
        (bench/bench_l1.py); declared 1.07 GiB."""
        npix, _ = self._pixels(self.plan(date).frames)
        return int((300 + 48 * npix / 2**20) * attempt)

    def stack_runtime(self, date: str, mtype: str, tag: str | None) -> int:
        sel = self.selection(date, mtype, tag)
        npix, next_ = self._pixels(sel.used)
        return 10 + math.ceil(len(sel.used) * next_ * npix / 2e9)


def database_lookup(
    date: str, mtype: str, max_age_days: int | None, min_frames: int | None = None
) -> Path:
    """Nearest registered master of ``mtype`` for ``date`` from the calibration database,
    made of at least ``min_frames`` frames (the rule the disk look-up applies too)."""
    from kpfmasters.db import connect, nearest_master
    from kpfmasters.db.nearest import DEFAULT_MIN_NFRAMES

    conn = connect()
    try:
        return nearest_master(
            conn,
            date,
            mtype,
            max_age_days=max_age_days,
            min_nframes=DEFAULT_MIN_NFRAMES if min_frames is None else min_frames,
            other_nights=True,  # as on disk: the night's own master is never its predecessor
        )
    finally:
        conn.close()


def database_traces(
    date: str, max_age_days: int | None, min_frames: int | None = None
) -> tuple[str, dict[str, Path]]:
    """The registered order traces of the nearest earlier night for ``date`` from the
    calibration database (:func:`kpfmasters.db.nearest.nearest_traces`): both CCDs' files of
    one night, at most ``max_age_days`` days before, traced on a flat of at least
    ``min_frames`` frames (the rule a predecessor flat follows).

    Returns
    -------
    tuple of (str, dict)
        The night (``YYYYMMDD``) and CCD (``GREEN_CCD``, ``RED_CCD``) -> registered file.
    """
    from kpfmasters.db import connect, nearest_traces
    from kpfmasters.db.nearest import DEFAULT_MIN_NFRAMES

    conn = connect()
    try:
        found = nearest_traces(
            conn,
            date,
            max_age_days=max_age_days,
            min_nframes=DEFAULT_MIN_NFRAMES if min_frames is None else min_frames,
        )
    finally:
        conn.close()
    return f"{found.night:%Y%m%d}", {ccd: found.paths[ccd.lower()] for ccd in TRACE_CCDS}


def rejects_dir_for(two_d_path: str, date: str) -> str:
    """The rejects folder of a 2D file ``<work_root>/2D/<date>/<name>``."""
    return str(rejects_dir(Path(two_d_path).parents[2], date))
