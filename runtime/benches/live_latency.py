#!/usr/bin/env python3
"""Latency from an event reaching weir's collector to its profile update reaching a dashboard
client, for the live viewer demo under load.

Connects to the dashboard's SSE stream (/api/stream) as a browser would and, for every `profile`
event, takes now - profile.last_seen (the collector timestamp of the newest event the profile
applied; same machine, same clock). Run beside `weir loadgen`:

    make demo &                      # or: weir run examples/live-viewer/pipeline.toml
    weir loadgen --viewers 1000 --duration 60s http://127.0.0.1:9090 &
    python3 runtime/benches/live_latency.py http://127.0.0.1:8080 55
"""
import json
import sys
import time
import urllib.request
from datetime import datetime


def main():
    base, seconds = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 30
    stream = urllib.request.urlopen(base + "/api/stream", timeout=10)
    end = time.time() + seconds
    lat, event = [], None
    while time.time() < end:
        line = stream.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "profile":
            p = json.loads(line[6:])
            seen = p.get("last_seen")
            if seen:
                t = datetime.fromisoformat(seen.replace("Z", "+00:00")).timestamp()
                lat.append((time.time() - t) * 1000)
    lat.sort()
    if not lat:
        print("no profile updates received")
        return 1
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
    print(json.dumps({"updates": len(lat), "updates_per_s": round(len(lat) / seconds, 1),
                      "p50_ms": round(q(0.50), 1), "p99_ms": round(q(0.99), 1),
                      "max_ms": round(lat[-1], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
