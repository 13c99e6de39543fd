"""Order traces on arrays: order assignment, the CSV format, KPF's full-size trace geometry."""

from __future__ import annotations

import numpy as np
import pytest

from kpfmasters.core.errors import InputError
from kpfmasters.science.extract import box_extract
from kpfmasters.science.traces import (
    ORDERLETS,
    TraceSet,
    assign_orders,
    find_traces,
    read_traces,
    write_traces,
)
from kpfmasters.sim.spectrograph import kpf_trace_file
from kpfmasters.sim.truth import make_ccd_truth


def test_orders_follow_the_orderlet_sequence():
    sky, sci1, sci2, sci3, cal = range(5)
    # RED's bottom order has no SKY; a missing CAL and SKY between orders; a lone SCI2
    seq = [sci1, sci2, sci3, cal, sky, sci1, sci2, sci3, sci1, sci2, sci2]
    assert assign_orders(np.array(seq)).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3]


def test_csv_round_trip_and_errors(tmp_path):
    ts = TraceSet(
        [[10.25, 1e-3, -2e-7, 3e-11], [30.5, 0.0, 0.0, 0.0]],
        [2.2, 2.4],
        [2.3, 2.1],
        [0, 5],
        [127, 120],
        ["SCI2", "CAL"],
        [0, 0],
    )
    path = write_traces(ts, tmp_path / "t.csv")
    back = read_traces(path)
    np.testing.assert_array_equal(back.coeffs, ts.coeffs)
    assert back.fiber == ts.fiber and back.order.tolist() == [0, 0]
    assert back.x1.tolist() == [0, 5] and back.bottom.tolist() == [2.2, 2.4]
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace("CAL", "XYZ"))
    with pytest.raises(InputError, match="line 3: Fiber 'XYZ'"):
        read_traces(bad)
    bad.write_text(path.read_text().replace("Coeff3", "Coeff9"))
    with pytest.raises(InputError, match="header"):
        read_traces(bad)


def test_kpf_files_give_their_own_numbering():
    """The package's copy of KPF's traces reads with kpf-next's 1-based orders."""
    green = read_traces(kpf_trace_file("GREEN_CCD"), order_base=1)
    red = read_traces(kpf_trace_file("RED_CCD"), order_base=1)
    assert (len(green), green.n_orders, len(red), red.n_orders) == (175, 35, 159, 32)
    for ts in (green, red):
        index = np.array([ORDERLETS.index(f) for f in ts.fiber])
        assert assign_orders(index).tolist() == ts.order.tolist()
    assert red.fiber[0] == "SCI1"


def test_kpf_geometry_red_traces_found_and_centred():
    """At full size in KPF's geometry (RED: 159 traces, order 0 without SKY) every trace is
    found with its orderlet and order, centres within 0.05 px rms (noise-free lamp, PRNU in);
    extraction of a constant image gives each aperture's height."""
    truth = make_ccd_truth("RED_CCD", 4080, 2, [], 0, geometry="kpf")
    spec = truth.spectrograph
    traces = find_traces(np.asarray(truth.prnu) * np.asarray(truth.lamp), truth.order_mask)
    assert len(traces) == 159 and traces.n_orders == 32
    assert list(zip(traces.fiber, traces.order.tolist(), strict=True)) == list(
        zip(spec.fiber, spec.order.tolist(), strict=True)
    )
    fitted = traces.centres(4080)
    err = np.concatenate(
        [
            fitted[i, spec.x1[i] : spec.x2[i] + 1] - spec.centres[i, spec.x1[i] : spec.x2[i] + 1]
            for i in range(len(traces))
        ]
    )
    assert np.sqrt(np.mean(err**2)) < 0.05
    flux, _ = box_extract(traces, np.ones((4080, 4080)))
    on_chip = (fitted - traces.bottom[:, None] >= -0.5) & (fitted + traces.top[:, None] <= 4079.5)
    inside = np.isfinite(flux) & on_chip
    height = (traces.bottom + traces.top)[:, None] * np.ones((1, 4080))
    np.testing.assert_allclose(flux[inside], height[inside], rtol=1e-12)
