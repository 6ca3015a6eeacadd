#!/usr/bin/env python3
"""Witness latency: how long after its PUBACK a message is covered by a
checkpoint that meets the witness quorum, and each witness's round trip.

Starts, on loopback, three standalone witnesses (`sealmq witness serve`) and
one broker whose policy asks all three with a 2-of-3 quorum; publishes QoS 1
messages at a fixed rate from one client; polls /v1/checkpoint/witnessed
and records when each size first appears. A message's latency is the time
from its PUBACK to the first witnessed checkpoint whose size exceeds its
log index (one publisher on a fresh log: message k has index k).

Usage: tests/bench/witness_latency.py SEALMQ_BINARY [--messages N] [--rate R]
Prints a JSON summary. Polling every ~2 ms bounds the error from below.
"""
import argparse, http.client, json, os, subprocess, sys, tempfile, threading, time

import paho.mqtt.client as mqtt


def start(cmd, last):
    """Starts a process and reads its banner up to the line named `last`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "RUST_LOG": "warn"})
    lines = {}
    for line in proc.stdout:
        parts = line.split()
        if len(parts) >= 2 and line.startswith("  "):
            lines[parts[0]] = parts[1]
        if last in lines:
            break
    return proc, lines


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sealmq")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=200.0)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="witness-latency-")
    bin_ = args.sealmq
    init = subprocess.run([bin_, "--data", f"{tmp}/log", "init", "--origin", "bench/log"],
                          check=True, capture_output=True, text=True).stdout
    log_vkey = init.split()[1]
    procs, witnesses = [], []
    for n in range(3):
        proc, lines = start([bin_, "--data", f"{tmp}/w{n}", "witness", "serve", "--listen", "127.0.0.1:0",
                             "--log", log_vkey], "data")
        procs.append(proc)
        witnesses.append((f"W{n}", lines["witness"], lines["http"] + "/witness"))
    policy = f"{tmp}/policy.txt"
    with open(policy, "w") as f:
        f.write(f"log {log_vkey}\n")
        for name, vkey, url in witnesses:
            f.write(f"witness {name} {vkey} {url}\n")
        f.write("group two 2 W0 W1 W2\nquorum two\n")
    broker, lines = start([bin_, "--data", f"{tmp}/log", "serve", "--listen", "127.0.0.1:0", "--http",
                           "127.0.0.1:0", "--policy", policy], "vkey")
    procs.append(broker)
    try:
        host, port = lines["mqtt"].rsplit(":", 1)
        http_addr = lines["http"].removeprefix("http://")
        witnessed_at = {}
        done = threading.Event()

        def poll():
            conn = http.client.HTTPConnection(http_addr, timeout=5)
            last = -1
            while not done.is_set():
                conn.request("GET", "/v1/checkpoint/witnessed")
                resp = conn.getresponse()
                body = resp.read().decode()
                now = time.monotonic()
                if resp.status == 200:
                    size = int(body.split("\n")[1])
                    if size > last:
                        witnessed_at[size] = now
                        last = size
                time.sleep(0.002)

        acked = {}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="latency", protocol=mqtt.MQTTv311)
        client.on_publish = lambda c, u, mid, rc, props: acked.__setitem__(mid, time.monotonic())
        client.connect(host, int(port))
        client.loop_start()
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        mids = []
        start_t = time.monotonic()
        for k in range(args.messages):
            target = start_t + k / args.rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            mids.append(client.publish("bench/witness", f"m{k}".encode(), qos=1).mid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(acked) < len(mids) or max(witnessed_at, default=0) < len(mids)):
            time.sleep(0.05)
        done.set()
        poller.join()
        client.loop_stop()
        sizes = sorted(witnessed_at)
        latencies = []
        for k, mid in enumerate(mids):
            covering = next((s for s in sizes if s > k), None)
            if covering is None or mid not in acked:
                continue
            latencies.append((witnessed_at[covering] - acked[mid]) * 1000)
        latencies.sort()
        conn = http.client.HTTPConnection(http_addr, timeout=5)
        conn.request("GET", "/v1/witnesses")
        status = json.loads(conn.getresponse().read())
        print(json.dumps({
            "messages": args.messages, "rate_per_s": args.rate, "acked": len(acked),
            "covered_by_witnessed": len(latencies),
            "puback_to_witnessed_ms": {"p50": quantile(latencies, 0.5), "p99": quantile(latencies, 0.99),
                                       "max": latencies[-1] if latencies else None},
            "witness_round_trip_ms": {w["name"]: w["round_trip_ms"] for w in status["witnesses"]},
        }, indent=1))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
