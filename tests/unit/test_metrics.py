"""Reading vLLM's /metrics (names as vLLM 0.11.0's v1 Prometheus logger writes them)."""

import pytest

from vllm_hpc.metrics import parse, quantile, render, summarize

pytestmark = pytest.mark.unit


def exposition(running: int, prompt: int, generated: int, ok: int, aborted: int, ttft: dict[str, int], hits: int, queries: int) -> str:
    buckets = "\n".join(f'vllm:time_to_first_token_seconds_bucket{{le="{le}",model_name="tiny"}} {n}' for le, n in ttft.items())
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="tiny"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="tiny"}} 2
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="tiny"}} 0.25
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{{engine="0",model_name="tiny"}} {prompt}
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{{engine="0",model_name="tiny"}} {generated}
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{{engine="0",model_name="tiny"}} {queries}
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{{engine="0",model_name="tiny"}} {hits}
# TYPE vllm:request_success counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="tiny"}} {ok}
vllm:request_success_total{{engine="0",finished_reason="abort",model_name="tiny"}} {aborted}
# TYPE vllm:time_to_first_token_seconds histogram
{buckets}
vllm:time_to_first_token_seconds_count{{model_name="tiny"}} {list(ttft.values())[-1]}
"""


def test_rates_and_percentiles_come_from_the_interval():
    before = parse(exposition(0, 100, 50, 1, 0, {"0.1": 1, "0.5": 1, "1.0": 1, "+Inf": 1}, 10, 100), taken=0.0)
    after = parse(exposition(3, 300, 450, 9, 1, {"0.1": 1, "0.5": 5, "1.0": 9, "+Inf": 9}, 40, 200), taken=2.0)
    f = summarize(before, after)
    assert (f["requests_running"], f["requests_waiting"], f["requests_finished"], f["requests_aborted"]) == (3, 2, 9, 1)
    assert (f["prompt_tokens_per_s"], f["generation_tokens_per_s"]) == (100.0, 200.0)
    assert (f["kv_cache_usage_pct"], f["prefix_cache_hit_rate_pct"]) == (25.0, 30.0)
    # 8 new requests: 4 in (0.1, 0.5], 4 in (0.5, 1.0]; the median is at 0.5 s.
    assert f["ttft_s"]["p50"] == pytest.approx(0.5) and 0.5 < f["ttft_s"]["p90"] <= 1.0
    assert f["e2e_latency_s"] == {"p50": None, "p90": None, "p99": None}
    text = render("12", "tiny", f)
    assert "running 3" in text and "generation 200" in text and "25%" in text and "p50 0.5s" in text


def test_quantile_of_an_empty_histogram_is_none():
    assert quantile({}, 0.5) is None and quantile({1.0: 0.0, float("inf"): 0.0}, 0.5) is None
    assert quantile({1.0: 0.0, float("inf"): 4.0}, 0.5) == 1.0  # all above the last finite bound
