"""File names: L0 pattern, 2D names, master names, OBJECT tags."""

import pytest

from kpfmasters.core.naming import master_name, object_tag, parse_l0_name, two_d_name


@pytest.mark.parametrize(
    "name, ok, reason",
    [
        ("KP.20230606.12345.67.fits", True, ""),
        ("KP.20230606.12345.67-1.fits", False, "re-delivered"),
        ("KP.20230607.12345.67.fits", False, "differs from the night"),
        ("KP.20230606.1234.67.fits", False, "does not match"),
        ("kp.20230606.12345.67.fits", False, "does not match"),
        ("KP.20230606.99999.00.fits", False, "out of range"),
    ],
)
def test_l0_names(name, ok, reason):
    got_ok, got_reason = parse_l0_name(name, "20230606")
    assert got_ok is ok and reason in got_reason


def test_two_d_and_master_names():
    assert two_d_name("KP.20230606.12345.67.fits") == "KP.20230606.12345.67_2D.fits"
    assert master_name("20230606", "bias") == "kpf_20230606_master_bias.fits"
    assert (
        master_name("20230606", "arclamp", "autocal-une-sky")
        == "kpf_20230606_master_arclamp_autocal-une-sky.fits"
    )
    with pytest.raises(ValueError):
        master_name("20230606", "arclamp")


def test_object_tags_are_safe_and_unique():
    hostile = ["a b", "a/b", "a_b", "it's", 'say "x"', "Étalon", "étalon", "..", "a;b", "%", ""]
    tags = [object_tag(o) for o in hostile]
    assert len(set(tags)) == len(hostile)
    for tag in tags:
        assert tag and "/" not in tag and not tag.startswith(".")
        assert all(c.isascii() and (c.isalnum() or c in "._+-") for c in tag)
    assert object_tag("autocal-thar-all-morn") == "autocal-thar-all-morn"
