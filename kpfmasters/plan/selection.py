"""Which frames make which master (docs/reference.md §3), decided from the night's headers.

A selection rule is ``{keyword, op, value, ignore_case}`` from ``config.yaml`` on any
PRIMARY keyword; a frame is picked by a master when every rule holds. String values compare
without trailing blanks (the FITS rule); with ``ignore_case`` also without leading blanks
and ignoring case, which is how arclamp OBJECT groups compare (as the database key does).
Picked frames are ordered by ``MJD-OBS`` then file name. A picked frame can still be
unusable (unreadable, truncated, duplicate, wrong CCD shape, no exposure time to normalise
by, ``DATE-OBS``/``MJD-OBS`` outside the night of its file name, ``EXPTIME`` above
``ELAPSED``); it is then listed with ``USED = false`` and why.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections import Counter
from dataclasses import dataclass, field

from kpfmasters.core.naming import object_tag, two_d_name
from kpfmasters.core.products import MASTERS
from kpfmasters.plan.night import Frame, is_number

MJD_EPOCH = dt.date(1858, 11, 17)

OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def describe_rules(rules: list[dict]) -> str:
    return " and ".join(f"{r['keyword']} {r['op']} {r['value']!r}" for r in rules)


def check_rule(frame: Frame, rule: dict) -> str:
    """'' when ``frame`` satisfies ``rule``, else a short reason it does not."""
    key, op, want = rule["keyword"], rule["op"], rule["value"]
    if key not in frame.header:
        return f"{key} missing"
    have = frame.header[key]
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        if not is_number(have):
            return f"{key} {have!r} is not a number"
        ok = OPS[op](float(have), float(want))
    else:
        left, right = str(have).rstrip(" "), str(want).rstrip(" ")
        if rule.get("ignore_case"):
            left, right = group_key(left), group_key(right)
        ok = OPS[op](left, right)
    return "" if ok else f"{key} {have!r} fails {op} {want!r}"


def group_key(value) -> str:
    """How OBJECT groups (and ``ignore_case`` rules) compare: without surrounding blanks,
    ignoring case."""
    return str(value).strip().casefold()


def selection_keywords(cfg: dict) -> list[str]:
    """Every PRIMARY keyword the configured selection rules (and arclamp grouping) name."""
    masters = cfg["masters"]
    keys = {rule["keyword"] for m in masters.values() for rule in m["select"]}
    keys.add(masters["arclamp"]["group_by"])
    return sorted(keys)


def rule_failures(frame: Frame, rules: list[dict]) -> list[str]:
    return [reason for rule in rules if (reason := check_rule(frame, rule))]


@dataclass
class Pick:
    """One picked frame: a row of the master's INPUTS table."""

    frame: Frame
    used: bool
    reason: str = ""

    def row(self) -> dict:
        exptime = self.frame.number("EXPTIME")
        mjd = self.frame.number("MJD-OBS")
        return {
            "FILENAME": two_d_name(self.frame.name),
            "L0FILE": self.frame.name,
            "MJD_OBS": mjd,  # None when missing (a NaN in the INPUTS table)
            "EXPTIME": exptime,
            "USED": self.used,
            "REASON": self.reason,
        }


@dataclass
class Selection:
    """Frames one master of one night is made from."""

    date: str
    mtype: str
    rules: list[dict]
    min_frames: int
    obj: str | None = None
    picks: list[Pick] = field(default_factory=list)
    near_misses: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tag(self) -> str | None:
        return object_tag(self.obj) if self.obj is not None else None

    @property
    def label(self) -> str:
        return self.mtype if self.obj is None else f"arclamp {self.obj!r}"

    @property
    def used(self) -> list[Frame]:
        return [p.frame for p in self.picks if p.used]

    @property
    def buildable(self) -> bool:
        return len(self.used) >= self.min_frames

    def rows(self) -> list[dict]:
        return [p.row() for p in self.picks]

    def why_not(self) -> str:
        """One line for the log when the master cannot be made."""
        n_used, n_picked = len(self.used), len(self.picks)
        extra = f" ({n_picked - n_used} unusable)" if n_picked != n_used else ""
        return (
            f"master {self.label} for {self.date} not made: {n_picked} frame(s) matched "
            f"{describe_rules(self.rules)}{extra}, {n_used} usable, "
            f"at least {self.min_frames} needed"
        )

    def summary(self) -> list[str]:
        """Log lines: what was selected and why, and what was not."""
        lines = [
            f"{self.label}: {len(self.picks)} frame(s) match {describe_rules(self.rules)}; "
            f"{len(self.used)} usable"
        ]
        for pick in self.picks:
            state = "used" if pick.used else f"NOT USED: {pick.reason}"
            lines.append(f"  {pick.frame.name} MJD-OBS={pick.frame.mjd:.6f} {state}")
        for name, reason in self.near_misses:
            lines.append(f"  {name} not selected: {reason}")
        if not self.buildable:
            lines.append("  " + self.why_not())
        return lines


def outside_night(frame: Frame, date: str) -> str:
    """Why ``frame``'s ``MJD-OBS`` or ``DATE-OBS`` lies outside UT date ``date``
    (``YYYYMMDD``, the night of its file name), '' when both lie inside (or are absent).
    Such a frame is a copy or link of another night's file."""
    day = dt.datetime.strptime(date, "%Y%m%d").date()
    mjd = frame.number("MJD-OBS")
    if mjd is not None and math.floor(mjd) != (day - MJD_EPOCH).days:
        return f"MJD-OBS {mjd!r} lies outside night {date} (a copy of another night's file?)"
    when = frame.header.get("DATE-OBS")
    if isinstance(when, str) and when.strip():
        if when.strip()[:10] != day.isoformat():
            return f"DATE-OBS {when!r} lies outside night {date} (a copy of another night's file?)"
    return ""


def exposure_problem(frame: Frame) -> str:
    """Why ``frame``'s ``EXPTIME`` cannot be right: it exceeds ``ELAPSED`` (seconds)."""
    exptime, elapsed = frame.number("EXPTIME"), frame.number("ELAPSED")
    if exptime is not None and elapsed is not None and exptime > elapsed:
        return f"EXPTIME {exptime!r} s exceeds ELAPSED {elapsed!r} s"
    return ""


def _usability(frames: list[Frame], mtype: str, date: str | None = None) -> dict[str, str]:
    """Reason each picked frame is unusable ('' when usable), frames in stacking order.

    With ``date``, frames whose time lies outside that night are unusable too.
    """
    reasons: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for frame in frames:
        reason = frame.problem
        if not reason and frame.number("MJD-OBS") is None:
            if "MJD-OBS" in frame.header:
                reason = f"MJD-OBS {frame.header['MJD-OBS']!r} is not a number"
            else:
                reason = "MJD-OBS missing"
        if not reason and date is not None:
            reason = outside_night(frame, date)
        if not reason:
            reason = exposure_problem(frame)
        if not reason and MASTERS[mtype].per_second:
            exptime = frame.number("EXPTIME")
            if exptime is None or exptime <= 0:
                reason = f"EXPTIME {frame.header.get('EXPTIME')!r} cannot normalise (need > 0)"
        if not reason:
            signature = (frame.header.get("MJD-OBS"), frame.header.get("DATE-OBS"), frame.size)
            if signature in seen:
                reason = f"duplicate of {seen[signature]} (same MJD-OBS, DATE-OBS and size)"
            else:
                seen[signature] = frame.name
        reasons[frame.name] = reason
    # Frames whose CCD shapes differ from the most common shape cannot be stacked with it.
    shapes = Counter(
        tuple(sorted((k, tuple(v)) for k, v in f.ccd_shapes.items()))
        for f in frames
        if not reasons[f.name]
    )
    if len(shapes) > 1:
        best = max(shapes.values())
        winner = next(s for s in shapes if shapes[s] == best)  # first in stacking order
        for frame in frames:
            mine = tuple(sorted((k, tuple(v)) for k, v in frame.ccd_shapes.items()))
            if not reasons[frame.name] and mine != winner:
                reasons[frame.name] = (
                    f"CCD shapes {dict(mine)} differ from the night's {dict(winner)}"
                )
    return reasons


def stacking_order(frames: list[Frame]) -> list[Frame]:
    return sorted(frames, key=lambda f: (f.mjd, f.name))


def select(
    frames: list[Frame], date: str, mtype: str, rules: list[dict], min_frames: int, obj=None
) -> Selection:
    """Pick ``frames`` satisfying every rule; near misses (first rule holds) are noted."""
    sel = Selection(date=date, mtype=mtype, rules=rules, min_frames=min_frames, obj=obj)
    picked = []
    for frame in frames:
        failures = rule_failures(frame, rules)
        if not failures:
            picked.append(frame)
        elif not check_rule(frame, rules[0]):
            sel.near_misses.append((frame.name, "; ".join(failures)))
    ordered = stacking_order(picked)
    reasons = _usability(ordered, mtype, date)
    sel.picks = [Pick(f, used=not reasons[f.name], reason=reasons[f.name]) for f in ordered]
    return sel


def arclamp_groups(base: Selection, key: str) -> list[str]:
    """One value of ``key`` per group of the arclamp frames ``base`` picked, groups compared
    by :func:`group_key`: the spelling (without surrounding blanks) of the group's first
    frame in stacking order names it. Sorted by name."""
    names: dict[str, str] = {}
    for pick in base.picks:
        if key in pick.frame.header:
            value = str(pick.frame.header[key]).strip()
            names.setdefault(group_key(value), value)
    return sorted(names.values())


@dataclass
class NightPlan:
    """Every master of one night: its selection, and the files the night ignored."""

    date: str
    frames: list[Frame]
    ignored: list[tuple[str, str]]
    selections: dict[str, Selection]  # keys: bias, dark, flat, arclamp_<tag>

    def get(self, mtype: str, tag: str | None = None) -> Selection | None:
        return self.selections.get(mtype if tag is None else f"arclamp_{tag}")

    def arclamps(self) -> list[Selection]:
        """The arclamp selections, one per OBJECT value."""
        return [s for k, s in self.selections.items() if k.startswith("arclamp_")]

    def unselectable(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of readable frames no master picked or nearly picked because a
        keyword a selection rule needs is missing or not a number (e.g. no IMTYPE)."""
        seen = {p.frame.name for sel in self.selections.values() for p in sel.picks}
        seen |= {name for sel in self.selections.values() for name, _ in sel.near_misses}
        rules = [rule for sel in self.selections.values() for rule in sel.rules]
        out = []
        for frame in self.frames:
            if frame.problem or frame.name in seen:
                continue
            reasons = dict.fromkeys(
                reason
                for rule in rules
                if (reason := check_rule(frame, rule)).endswith(("missing", "is not a number"))
            )
            if reasons:
                out.append((frame.name, "; ".join(reasons)))
        return out

    def log_lines(self) -> list[str]:
        lines = [f"night {self.date}: {len(self.frames)} L0 file(s)"]
        for name, reason in self.ignored:
            lines.append(f"  ignored {name}: {reason}")
        for frame in self.frames:
            if frame.problem:
                lines.append(f"  unusable {frame.name}: {frame.problem}")
            elif frame.note:
                lines.append(f"  note {frame.name}: {frame.note}")
        for name, reason in self.unselectable():
            lines.append(f"  not selected by any master {name}: {reason}")
        for sel in self.selections.values():
            lines.extend(sel.summary())
        return lines


def plan_night(
    frames: list[Frame], ignored: list[tuple[str, str]], date: str, cfg: dict
) -> NightPlan:
    """Apply the configured selection of every master to one night's frames."""
    masters = cfg["masters"]
    min_frames = cfg["min_frames"]
    selections: dict[str, Selection] = {}
    for mtype, kind in MASTERS.items():
        if not kind.per_object:
            selections[mtype] = select(frames, date, mtype, masters[mtype]["select"], min_frames)
    arc = masters["arclamp"]
    key = arc["group_by"]
    base = select(frames, date, "arclamp", arc["select"], min_frames)
    objects = [str(o).strip() for o in arc["objects"]] or arclamp_groups(base, key)
    for obj in objects:
        rules = [*arc["select"], {"keyword": key, "op": "==", "value": obj, "ignore_case": True}]
        sel = select(frames, date, "arclamp", rules, min_frames, obj=obj)
        other_lamps = {p.frame.name for p in base.picks}
        sel.near_misses = [(n, r) for n, r in sel.near_misses if n not in other_lamps]
        selections[f"arclamp_{sel.tag}"] = sel
    return NightPlan(date=date, frames=frames, ignored=ignored, selections=selections)
