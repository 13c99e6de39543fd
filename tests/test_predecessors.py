"""Nearest predecessor master on disk: ties to the earlier night, maximum age, messages."""

import pytest

from kpfmasters.core.errors import NoPredecessorError
from kpfmasters.plan.predecessors import Candidate, masters_on_disk, nearest


def touch_master(root, date, mtype):
    path = root / date / f"kpf_{date}_master_{mtype}.fits"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_nearest_ties_to_earlier_and_age(tmp_path):
    for d in ("20230601", "20230611", "20230620"):
        touch_master(tmp_path, d, "bias")
    touch_master(tmp_path, "20230606", "dark")
    (tmp_path / "notes").mkdir()
    found = masters_on_disk(tmp_path, "bias")
    assert sorted(c.date for c in found) == ["20230601", "20230611", "20230620"]
    assert nearest("20230606", "bias", found, 30).date == "20230601"  # 5 days each way
    assert nearest("20230610", "bias", found, 30).date == "20230611"
    assert nearest("20230606", "bias", found, 5).date == "20230601"
    with pytest.raises(NoPredecessorError, match="5 days away, more than the maximum age of 4"):
        nearest("20230606", "bias", found, 4)
    with pytest.raises(NoPredecessorError, match="no master flat of its own and none exists"):
        nearest("20230606", "flat", masters_on_disk(tmp_path, "flat"), 30)


def test_own_night_is_never_its_own_fallback(tmp_path):
    cands = [Candidate("20230606", tmp_path / "a"), Candidate("20230608", tmp_path / "b")]
    assert nearest("20230606", "bias", cands, None).date == "20230608"
