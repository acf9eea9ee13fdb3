"""Wait until a Ray cluster has N alive nodes; print them as JSON. Bounded."""

import json
import sys
import time

import ray

ip, port, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 120
while True:
    try:
        # The driver's own address must be the fabric one: with no default route Ray
        # would fall back to the hostname's (management) address.
        ray.init(address=f"{ip}:{port}", _node_ip_address=ip, logging_level="ERROR")
        break
    except Exception as e:  # GCS not up yet
        if time.monotonic() > deadline:
            raise SystemExit(f"ray.init({ip}:{port}) kept failing: {e}")
        time.sleep(0.5)
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want:
        break
    if time.monotonic() > deadline:
        raise SystemExit(f"only {len(alive)} of {want} Ray nodes joined")
    time.sleep(0.2)
print(json.dumps([{"ip": n["NodeManagerAddress"], "hostname": n["NodeManagerHostname"],
                   "gpus": n["Resources"].get("GPU", 0)} for n in alive]))
ray.shutdown()
