"""`vllm-hpc metrics`: how loaded a job's server is, from vLLM's Prometheus endpoint
(/metrics, the text format, parsed with prometheus_client's parser). Two snapshots an
interval apart give rates and the latency percentiles of the requests in between.
Parsing and the figures are pure; only ``fetch`` talks to the server."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Snapshot:
    taken: float
    values: dict[str, float] = field(default_factory=dict)  # sample name -> sum over its labels
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # histogram -> {le: cumulative count}
    aborted: float = 0.0  # requests finished with finished_reason="abort"


def parse(text: str, taken: float) -> Snapshot:
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    aborted = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels.get("le", "inf"))
                hist = buckets.setdefault(sample.name[: -len("_bucket")], {})
                hist[le] = hist.get(le, 0.0) + sample.value
                continue
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
            if sample.name == "vllm:request_success_total" and sample.labels.get("finished_reason") == "abort":
                aborted += sample.value
    return Snapshot(taken, values, buckets, aborted)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds the q-th request."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    rank = q * buckets[edges[-1]]
    lower, below = 0.0, 0.0
    for le in edges:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, count
    return lower


def summarize(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    seconds = max(after.taken - before.taken, 1e-6)

    def now(name: str) -> float | None:
        return after.values.get(name)

    def delta(name: str) -> float:
        return after.values.get(name, 0.0) - before.values.get(name, 0.0)

    def latency(name: str) -> dict[str, float | None]:
        hist = {le: c - before.buckets.get(name, {}).get(le, 0.0) for le, c in after.buckets.get(name, {}).items()}
        return {f"p{int(q * 100)}": _round(quantile(hist, q)) for q in QUANTILES}

    kv = now("vllm:kv_cache_usage_perc")
    if kv is None:
        kv = now("vllm:gpu_cache_usage_perc")
    queries, hits = delta("vllm:prefix_cache_queries_total"), delta("vllm:prefix_cache_hits_total")
    return {
        "interval_s": round(seconds, 2),
        "requests_running": now("vllm:num_requests_running"),
        "requests_waiting": now("vllm:num_requests_waiting"),
        "requests_finished": delta("vllm:request_success_total"),
        "requests_aborted": after.aborted - before.aborted,
        "prompt_tokens_per_s": round(delta("vllm:prompt_tokens_total") / seconds, 1),
        "generation_tokens_per_s": round(delta("vllm:generation_tokens_total") / seconds, 1),
        "kv_cache_usage_pct": round(kv * 100, 1) if kv is not None else None,
        "prefix_cache_hit_rate_pct": round(hits / queries * 100, 1) if queries > 0 else None,
        "ttft_s": latency("vllm:time_to_first_token_seconds"),
        "e2e_latency_s": latency("vllm:e2e_request_latency_seconds"),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def render(job_id: str, model: str, figures: dict[str, Any]) -> str:
    def shown(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:g}{unit}"

    def pcts(row: dict[str, float | None]) -> str:
        return "  ".join(f"{k} {shown(v, 's')}" for k, v in row.items())

    f = figures
    return "\n".join([
        f"job {job_id} ({model}), last {f['interval_s']:g}s",
        f"  requests      running {shown(f['requests_running'])}  waiting {shown(f['requests_waiting'])}"
        f"  finished {shown(f['requests_finished'])}  aborted {shown(f['requests_aborted'])}",
        f"  tokens/s      prompt {shown(f['prompt_tokens_per_s'])}  generation {shown(f['generation_tokens_per_s'])}",
        f"  KV cache      {shown(f['kv_cache_usage_pct'], '%')} used  prefix-cache hits {shown(f['prefix_cache_hit_rate_pct'], '%')}",
        f"  TTFT          {pcts(f['ttft_s'])}",
        f"  end to end    {pcts(f['e2e_latency_s'])}",
    ])  # fmt: skip


def fetch(base_url: str, taken: float) -> Snapshot:
    """One snapshot of ``base_url``/metrics (vLLM serves it without the API key)."""
    import requests

    from .errors import NotReadyError

    try:
        reply = requests.get(f"{base_url}/metrics", timeout=30)
    except requests.RequestException as err:
        raise NotReadyError(f"cannot reach {base_url}/metrics: {type(err).__name__}",
                            "check vllm-hpc status; from a login node use an SSH tunnel (see README)") from None
    if reply.status_code != 200:
        raise NotReadyError(f"{base_url}/metrics answered {reply.status_code}", "check the server log in the job directory")
    return parse(reply.text, taken)
