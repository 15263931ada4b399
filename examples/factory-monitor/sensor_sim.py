#!/usr/bin/env python3
"""Factory sensor simulator: a unix-socket service speaking newline-delimited JSON.

Each request line is a JSON object; {"zone": "zone4"} asks for one zone, anything else for all.
Each reply is one JSON line with pressure readings, limits and a status per zone. One zone
(--over, default zone4) reads above its limit so the monitor agent has something to alert on.

    python3 sensor_sim.py --socket /tmp/sensors.sock [--over zone4]
"""
import argparse
import json
import os
import random
import signal
import socketserver
import sys
import time

LIMIT_BAR = 6.0
ZONES = ["zone1", "zone2", "zone3", "zone4"]


def reading(zone, over, rng):
    if zone == over:
        pressure = round(rng.uniform(8.2, 9.4), 2)
    else:
        pressure = round(rng.uniform(3.8, 5.2), 2)
    status = "OVER LIMIT" if pressure > LIMIT_BAR else "ok"
    return {"zone": zone, "pressure_bar": pressure, "limit_bar": LIMIT_BAR, "status": status}


def make_handler(over, seed):
    rng = random.Random(seed)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for raw in self.rfile:
                try:
                    req = json.loads(raw.decode("utf-8") or "{}")
                except ValueError as e:
                    reply = {"error": f"request is not JSON: {e}"}
                else:
                    zone = req.get("zone") if isinstance(req, dict) else None
                    if zone in ZONES:
                        reply = reading(zone, over, rng)
                    elif zone:
                        reply = {"error": f"unknown zone {zone!r}", "zones": ZONES}
                    else:
                        reply = {"zones": [reading(z, over, rng) for z in ZONES]}
                    reply["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self.wfile.write((json.dumps(reply) + "\n").encode("utf-8"))
                self.wfile.flush()

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default="/tmp/sensors.sock")
    ap.add_argument("--over", default="zone4", help="zone that reads above its limit ('' for none)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server = socketserver.ThreadingUnixStreamServer(args.socket, make_handler(args.over, args.seed))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"sensor simulator listening on {args.socket}", flush=True)
    try:
        server.serve_forever()
    finally:
        os.unlink(args.socket)


if __name__ == "__main__":
    main()
