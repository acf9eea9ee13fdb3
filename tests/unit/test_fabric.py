"""The fabric test's plan and arithmetic (the communication runs on the bed: test_everyday)."""

import pytest

from vllm_hpc.fabric import FABRIC_PORT_OFFSET, bus_bandwidth_gbs, plan_fabric, render, slow_pairs

pytestmark = pytest.mark.unit


def test_plan_meets_in_the_jobs_port_block_and_picks_the_backend():
    plan = plan_fabric(1, ("gpu01", "gpu02"), "10.0.0.1", 15600, "ib0", "10.0.0.2", cuda_gpus=4)
    assert (plan.port, plan.backend, plan.world) == (15600 + FABRIC_PORT_OFFSET, "nccl", 2)
    assert plan_fabric(0, ("gpu01",), "10.0.0.1", 15600, "ib0", "10.0.0.1", cuda_gpus=0).backend == "gloo"


def test_bus_bandwidth_is_nccl_tests_busbw():
    # 1 GB in 1 s across 4 ranks: algbw 1 GB/s, busbw x 2(n-1)/n = 1.5
    assert bus_bandwidth_gbs(10**9, 1.0, 4) == pytest.approx(1.5)
    assert bus_bandwidth_gbs(10**9, 1.0, 1) == 0.0


def test_a_pair_below_half_the_median_is_slow():
    pairs = {"a<->b": 10.0, "a<->c": 9.0, "a<->d": 3.0}
    assert slow_pairs(pairs) == ["a<->d"]
    assert slow_pairs({"a<->b": 1.0}) == []
    text = render({"backend": "gloo", "interface": "ib0", "nodes": ["a", "b", "c", "d"],
                   "allreduce": [{"bytes": 1 << 20, "ms": 1.5, "bus_gbs": 0.9}], "pairs": pairs, "slow_pairs": ["a<->d"]})
    assert "a<->d" in text and text.count("SLOW") == 1 and "1 MiB" in text
