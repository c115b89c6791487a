"""bench/mesh's report. Usage: mesh_report.py WORKDIR ROUNDS CLK_TCK."""
import json
import statistics
import sys

work, rounds, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def load(name, r):
    return json.load(open(f"{work}/{name}.{r}"))


def row(name):
    p50, p99, cpu, rss, errs, reqs = [], [], [], [], [], []
    for r in range(1, rounds + 1):
        j = load(name, r)
        p50.append(j["latency_ms"]["p50"])
        p99.append(j["latency_ms"]["p99"])
        reqs.append(j["requests"])
        errs.extend(j["errors"])
        try:
            ticks = int(open(f"{work}/{name}.{r}.ticks").read())
            cpu.append(ticks / tck / max(j["requests"], 1) * 1e6)
        except (OSError, ValueError):
            pass
        text = open(f"{work}/{name}.{r}.rss").read().strip()
        rss.extend(tuple(int(v) for v in x.split(":")) for x in text.split(",") if x)
    m = statistics.median
    return {"p50": m(p50), "p99": m(p99), "cpu": m(cpu) if cpu else None,
            "rss": max(x[0] for x in rss) / 1024 if rss else None,
            "anon": max(x[1] for x in rss) / 1024 if rss else None, "requests": m(reqs), "errors": errs}


rows = {n: row(n) for n in ("direct", "haproxy", "mesh", "mesh-1")}
base = rows["direct"]
print(f"Rounds: {rounds}. Medians. Open loop at the given rate over keep-alive connections.\n")
print("| path | p50 ms | p99 ms | added p50 ms | added p99 ms | proxy CPU µs/request | proxy RSS MiB (max) | of it private MiB | requests | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
names = {"direct": "direct (no proxy)", "haproxy": "HAProxy 2.6 as the hop",
         "mesh": "plumb mesh: two sidecars, mTLS, traced", "mesh-1": "plumb: one sidecar (server side)"}
for n, r in rows.items():
    cpu = "-" if n == "direct" or r["cpu"] is None else f"{r['cpu']:.0f}"
    rss = "-" if n == "direct" or r["rss"] is None else f"{r['rss']:.1f}"
    anon = "-" if n == "direct" or r["anon"] is None else f"{r['anon']:.1f}"
    added = ("-", "-") if n == "direct" else (f"{r['p50'] - base['p50']:+.3f}", f"{r['p99'] - base['p99']:+.3f}")
    errs = ", ".join(sorted(set(r["errors"]))) or "none"
    print(f"| {names[n]} | {r['p50']:.3f} | {r['p99']:.3f} | {added[0]} | {added[1]} | {cpu} | {rss} | {anon} | {r['requests']:.0f} | {errs} |")
on = statistics.median(load("traced", r)["rps"] for r in range(1, rounds + 1))
off = statistics.median(load("untraced", r)["rps"] for r in range(1, rounds + 1))
print(f"\nTracing: {on:.0f} requests/s traced, {off:.0f} with tracing = \"off\": {on / off * 100:.1f} % (closed loop, 32 connections).")
