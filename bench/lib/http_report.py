"""bench/http's report: medians of wrk's and plumb bench's rounds, and their ratio.
Usage: http_report.py WORKDIR ROUNDS (reads WORKDIR/wrk.R and WORKDIR/plumb.R)."""
import json
import re
import statistics
import sys

work, rounds = sys.argv[1], int(sys.argv[2])
UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(r):
    t = open(f"{work}/wrk.{r}").read()
    out = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))}
    m = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s)\s", t, re.M)
    out["mean"] = float(m.group(1)) * UNIT[m.group(2)]
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        out["p" + q] = float(m.group(1)) * UNIT[m.group(2)]
    bad = re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", t)
    out["errors"] = "; ".join(bad)
    out["cpu"] = cpu_us(f"{work}/wrk.{r}.cpu", out["rps"] * seconds(t))
    return out


def seconds(wrk_text):
    return float(re.search(r"in ([\d.]+)s,", wrk_text).group(1))


def cpu_us(path, requests):
    """CPU time (user + system) per request, in microseconds, from /usr/bin/time -f "%U %S"."""
    user, system = open(path).read().split()[-2:]
    return (float(user) + float(system)) / requests * 1e6


def plumb(r):
    j = json.load(open(f"{work}/plumb.{r}"))
    lat = j["latency_ms"]
    return {"rps": j["rps"], "mean": lat["mean"], "p50": lat["p50"], "p90": lat["p90"], "p99": lat["p99"],
            "errors": ", ".join(j["errors"]), "cpu": cpu_us(f"{work}/plumb.{r}.cpu", j["requests"])}


runs = {"wrk": [wrk(r) for r in range(1, rounds + 1)],
        "plumb bench": [plumb(r) for r in range(1, rounds + 1)]}
med = {tool: {k: statistics.median(x[k] for x in rs) for k in ("rps", "mean", "p50", "p90", "p99", "cpu")}
       for tool, rs in runs.items()}
for tool, rs in runs.items():
    bad = [x["errors"] for x in rs if x["errors"]]
    if bad:
        print(f"warning: {tool} saw errors: {bad}")
print("| tool | requests/s | mean (ms) | p50 (ms) | p90 (ms) | p99 (ms) | CPU per request (µs) |")
print("|---|---|---|---|---|---|---|")
for tool in ("wrk", "plumb bench"):
    m = med[tool]
    print("| %s | %.0f | %.3f | %.3f | %.3f | %.3f | %.1f |" % (
        tool, m["rps"], m["mean"], m["p50"], m["p90"], m["p99"], m["cpu"]))
w, p = med["wrk"], med["plumb bench"]
print("| plumb bench / wrk | %.1f %% | %.1f %% | %.1f %% | %.1f %% | %.1f %% | %.1f %% |" % tuple(
    p[k] / w[k] * 100 for k in ("rps", "mean", "p50", "p90", "p99", "cpu")))
print()
print("rounds, requests/s: wrk " + ", ".join("%.0f" % x["rps"] for x in runs["wrk"])
      + "; plumb bench " + ", ".join("%.0f" % x["rps"] for x in runs["plumb bench"]))
