"""Ready means a one-token completion succeeded, not only /health; the same probe,
repeated while serving, is the liveness check."""

from __future__ import annotations

import threading

from .errors import NotReadyError, UnhealthyError
from .supervisor import Supervisor, wait_for

PROBE_PROMPT = "Hello"


def probe_url(host: str, node_ip: str, port: int) -> str:
    reach = node_ip if host in ("0.0.0.0", "::", "") else host
    return f"http://{reach}:{port}"


def probe_completion(base_url: str, model: str, api_key: str | None, timeout: float) -> tuple[bool, str]:
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        health = requests.get(f"{base_url}/health", timeout=timeout)
        if health.status_code != 200:
            return False, f"/health answered {health.status_code}"
        reply = requests.post(
            f"{base_url}/v1/completions",
            json={"model": model, "prompt": PROBE_PROMPT, "max_tokens": 1, "temperature": 0},
            headers=headers,
            timeout=timeout,
        )
    except requests.ConnectionError:
        return False, "port not open yet"
    except requests.Timeout:
        return False, f"no answer within {timeout:.0f}s"
    except requests.RequestException as err:
        return False, f"request failed: {type(err).__name__}"
    if reply.status_code != 200:
        return False, f"one-token completion answered {reply.status_code}"
    try:
        choices = reply.json().get("choices") or []
    except ValueError:
        return False, "completion answer is not JSON"
    if not choices:
        return False, "completion answer has no choices"
    return True, "one-token completion answered"


def wait_for_ready(supervisor: Supervisor, base_url: str, model: str, api_key: str | None, deadline_s: float) -> float:
    return wait_for(
        supervisor,
        f"server {base_url} to answer a one-token completion",
        lambda: probe_completion(base_url, model, api_key, timeout=10.0),
        deadline_s,
        NotReadyError,
        "see the server log; raise --ready-timeout for large models or slow file systems",
        interval=1.0,
    )


class LivenessWatcher(threading.Thread):
    """Fails the job after ``failures`` consecutive failed one-token completions."""

    def __init__(self, supervisor: Supervisor, base_url: str, model: str, api_key: str | None, interval: float, failures: int = 3) -> None:
        super().__init__(name="liveness", daemon=True)
        self.supervisor, self.base_url, self.model, self.api_key = supervisor, base_url, model, api_key
        self.interval, self.failures = interval, failures
        self.stopping = threading.Event()

    def run(self) -> None:
        misses = 0
        while not self.stopping.wait(self.interval):
            ok, seen = probe_completion(self.base_url, self.model, self.api_key, timeout=max(30.0, self.interval))
            if ok:
                misses = 0
                continue
            misses += 1
            self.supervisor.reporter.say(f"liveness check failed ({misses}/{self.failures}): {seen}")
            if misses >= self.failures:
                self.supervisor.fail(
                    UnhealthyError(
                        f"the server stopped generating: {self.failures} one-token completions in a row failed ({seen})",
                        "see the server log; the job stops so that it does not hold GPUs without serving",
                    )
                )
                return
