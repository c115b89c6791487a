"""bench/shop-faults' table: one row per run from OUTDIR/shop-NAME.json.
Usage: shop_report.py OUTDIR"""
import json
import os
import sys

out = sys.argv[1]
loss = "5 % loss on gateway"
rows = [("none", "no fault"), ("loss", loss), ("delay", "100 ms delay on product"),
        ("loss-10s-to-20s", loss + ", from 10 s to 20 s only")]
print("| fault | requests | errors | requests/s | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | per replica (served_by) |")
print("|---|---|---|---|---|---|---|---|---|")
for name, label in rows:
    path = f"{out}/shop-{name}.json"
    if not os.path.exists(path):
        print(f"| {label} | not run | | | | | | | |")
        continue
    r = json.load(open(path))
    lat = r["latency_ms"]
    errors = ", ".join(f"{k} {n}" for k, n in r["errors"].items()) or "0"
    replicas = ", ".join(f"{k} {n}" for k, n in r["replicas"].items())
    print("| %s | %d | %s | %.1f | %s | %s | %s | %s | %s |" % (
        label, r["requests"], errors, r["rps"], lat["p50"], lat["p90"], lat["p99"], lat["max"], replicas))
