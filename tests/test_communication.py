"""The alpha-beta cost model of a data-parallel step, against values worked by hand."""

import math

import pytest

from lamb.experiments import communication as comm


def test_ring_allreduce_by_hand():
    # p = 4, n = 400 bytes, alpha = 1 s, beta = 100 B/s: 2*3*1 + 2*(3/4)*400/100 = 6 + 6 = 12 s.
    assert comm.ring_allreduce_time(400, 4, latency_s=1.0, bandwidth_bytes_per_s=100.0) == pytest.approx(12.0)
    assert comm.ring_allreduce_time(400, 1, latency_s=1.0, bandwidth_bytes_per_s=100.0) == 0.0
    # The bandwidth term tends to 2 n / beta as p grows.
    t = comm.ring_allreduce_time(1e9, 10**6, latency_s=0.0, bandwidth_bytes_per_s=1e9)
    assert t == pytest.approx(2.0, rel=1e-5)


def test_step_time_and_overlap():
    t = comm.data_parallel_step_time(1e-3, 1024, 4, 400, latency_s=1.0, bandwidth_bytes_per_s=100.0)
    assert t == pytest.approx(1e-3 * 256 + 12.0)
    t_hidden = comm.data_parallel_step_time(1e-3, 1024, 4, 400, latency_s=1.0, bandwidth_bytes_per_s=100.0,
                                            overlap=1.0)
    assert t_hidden == pytest.approx(0.256)


def test_paper_figure8_efficiency():
    # Table 1 (v1): LAMB at 512 on 16 TPUs in 82.8 h; 32K on 1024 TPUs in 101.2 min; mixed 64K/32K in 76.19 min.
    s, e = comm.speedup_and_efficiency(82.8 * 60, 101.2, 64)
    assert s == pytest.approx(49.1, abs=0.05) and e == pytest.approx(0.767, abs=0.001)
    s, e = comm.speedup_and_efficiency(82.8 * 60, 76.19, 64)
    assert s == pytest.approx(65.2, abs=0.05) and e == pytest.approx(1.019, abs=0.001)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_bytes=-1, workers=2), "num_bytes"),
    (dict(num_bytes=1, workers=0), "workers"),
    (dict(num_bytes=1, workers=2.0), "workers"),
    (dict(num_bytes=math.nan, workers=2), "num_bytes"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        comm.ring_allreduce_time(**kwargs, latency_s=1e-6, bandwidth_bytes_per_s=1e9)


def test_bad_step_arguments():
    with pytest.raises(ValueError, match="multiple of workers"):
        comm.data_parallel_step_time(1e-3, 1000, 3, 1, latency_s=0, bandwidth_bytes_per_s=1)
    with pytest.raises(ValueError, match="overlap"):
        comm.data_parallel_step_time(1e-3, 1024, 4, 1, latency_s=0, bandwidth_bytes_per_s=1, overlap=2)
    with pytest.raises(ValueError, match="bandwidth"):
        comm.ring_allreduce_time(1, 2, latency_s=0, bandwidth_bytes_per_s=0)
