"""The fleet lab's HTTP load: WORKERS threads, each opening one keep-alive connection
after another to TARGET:80 until DURATION seconds have passed; each connection makes
REQUESTS requests GAP_MS apart (a flow that lives about REQUESTS * GAP_MS) and records
when it started, got its first answer and ended (wall-clock seconds), whether every request succeeded
(status 200 within TIMEOUT seconds), and the SNAT address:port the load balancer saw
(haproxy's X-Snat header: it names the forwarder that carried the flow). With STOP, no
new connection starts once that file exists either.

usage: fleet_load.py TARGET DURATION WORKERS REQUESTS GAP_MS TIMEOUT OUT.json [STOP]
"""

import http.client
import json
import os
import sys
import threading
import time

target, duration, workers, requests, gap_ms, timeout, out = sys.argv[1:8]
stop = sys.argv[8] if len(sys.argv) > 8 else None
duration, workers, requests = float(duration), int(workers), int(requests)
gap, timeout = int(gap_ms) / 1000.0, float(timeout)
flows, lock = [], threading.Lock()
end_at = time.time() + duration


def flow():
    rec = {"start": time.time(), "end": None, "first": None, "ok": False, "snat": None, "done": 0,
           "error": None}
    conn = http.client.HTTPConnection(target, 80, timeout=timeout)
    try:
        for i in range(requests):
            if i:
                time.sleep(gap)
            conn.request("GET", "/", headers={"Host": "fleet"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
            snat = r.getheader("X-Snat")
            if rec["snat"] is None:
                rec["snat"] = snat
                rec["first"] = time.time()
            elif snat != rec["snat"]:
                raise RuntimeError(f"SNAT changed within the flow: {rec['snat']} -> {snat}")
            rec["done"] += 1
        rec["ok"] = True
    except Exception as e:  # every failure of the flow counts: timeout, reset, refusal
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
        rec["end"] = time.time()
    with lock:
        flows.append(rec)


def worker():
    while time.time() < end_at and not (stop and os.path.exists(stop)):
        flow()


threads = [threading.Thread(target=worker) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out, "w") as f:
    json.dump(flows, f)
