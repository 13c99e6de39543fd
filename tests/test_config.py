"""Configuration: schema validation names the key; environment defaults; nights."""

import pytest

from kpfmasters.core.config import config_hash, expand_vars, load_config, parse_dates
from kpfmasters.core.errors import ConfigError


def test_defaults_are_the_spec_numbers(base_config):
    m = base_config["masters"]
    assert [m[t]["nsigma"] for t in ("bias", "dark", "flat", "arclamp")] == [2.1, 2.2, 2.3, 2.4]
    assert [m[t]["flag_min_count"] for t in ("bias", "dark", "flat", "arclamp")] == [10, 10, 10, 5]
    assert m["flat"]["smooth_sigma"] == 2.0 and m["flat"]["low_light_limit"] == 50.0
    assert base_config["adc_scale"] == 65536
    amp = base_config["amplifier"]
    assert (amp["prescan"], amp["serial_overscan"], amp["parallel_overscan"]) == (4, 50, 30)
    assert base_config["min_frames"] == 2 and base_config["flag_fraction"] == 0.01
    assert base_config["nights"] == ["20230606"]


@pytest.mark.parametrize(
    "override, key",
    [
        ({"masters": {"flat": {"nsigmaa": 3}}}, "masters.flat.nsigmaa"),
        ({"masters": {"bias": {"nsigma": "two"}}}, "masters.bias.nsigma"),
        ({"adc_scale": -1}, "adc_scale"),
        ({"stack": {"threads": 0}}, "stack.threads"),
        ({"unknown_key": 1}, "unknown_key"),
        (
            {"masters": {"dark": {"select": [{"keyword": "EXPTIME", "op": "=>", "value": 3}]}}},
            "masters.dark.select.0.op",
        ),
    ],
)
def test_schema_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"date": "20230606", **override})
    assert f"configuration key {key}:" in str(err.value)


def test_environment_supplies_path_defaults():
    env = {"KPFPIPE_MASTERS_BASE_DIR": "/data/masters", "KPFCRONJOB_SBX": "/sbx"}
    cfg = load_config(overrides={"date": 20230606}, environ=env)
    assert cfg["masters_root"] == "/data/masters"
    assert cfg["work_root"] == "/sbx/kpfmasters"
    assert cfg["order_mask"] == "/KPF-Pipeline-TestData/order_mask_3_2_20230502.fits"


def test_unset_variable_without_default_is_named():
    with pytest.raises(ConfigError, match="l0_root: environment variable NOPE is not set"):
        expand_vars("${NOPE}/x", "l0_root", environ={})


def test_dates_range_list_and_errors():
    assert parse_dates(dates="20230630..20230702") == ["20230630", "20230701", "20230702"]
    assert parse_dates(dates=[20230602, "20230601"]) == ["20230601", "20230602"]
    assert parse_dates(dates="20230602,20230601") == ["20230601", "20230602"]
    with pytest.raises(ConfigError, match="set only one"):
        parse_dates(date="20230601", dates="20230602")
    with pytest.raises(ConfigError, match="not a date"):
        parse_dates(date="2023-06-01")
    with pytest.raises(ConfigError, match="not a calendar date"):
        parse_dates(date="20230231")
    with pytest.raises(ConfigError, match="ends before"):
        parse_dates(dates="20230602..20230601")


def test_config_hash_is_stable_and_sensitive():
    a = config_hash("0.1", {"nsigma": 2.3, "x": [1, 2]})
    assert a == config_hash("0.1", {"x": [1, 2], "nsigma": 2.3})
    assert a != config_hash("0.1", {"nsigma": 2.4, "x": [1, 2]})
    assert len(a) == 16


def test_outside_a_checkout_is_one_clear_error(monkeypatch, tmp_path):
    """A package installed without its checkout (a wheel) says so in one line."""
    import kpfmasters.core.config as config_module
    from kpfmasters.workflow.pipeline import snakemake_argv

    monkeypatch.setattr(config_module, "REPO_ROOT", tmp_path)
    with pytest.raises(ConfigError, match=r"runs from its git checkout.*no Snakefile or config"):
        load_config(overrides={"date": "20230606"})
    with pytest.raises(ConfigError, match="clone the repository"):
        snakemake_argv({"date": "20230606"}, workdir=tmp_path, cores=1)
