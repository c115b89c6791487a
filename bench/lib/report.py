#!/usr/bin/env python3
"""Turn bench/run's raw results (WORK/control.tsv, WORK/dataplane.tsv, WORK/meta.tsv) into a markdown report.

control.tsv:   method n run setup_s teardown_s setup_status teardown_status note
dataplane.tsv: path streams bits_per_second status note
Statuses: ok, invalid (a check failed: the number is shown struck through), skipped.
"""
import os
import statistics
import sys

METHODS = ["plumb", "base", "ip", "batch", "netavark", "cni"]
METHOD_LABEL = {
    "plumb": "plumb up / down",
    "base": "plumb up / down, base build ($PLUMB_BASE)",
    "ip": "bash, one `ip` per operation",
    "batch": "`ip -batch` (host) + `ip -n NS -batch`",
    "netavark": "netavark 1.4 (iptables driver)",
    "cni": "CNI bridge + host-local + ipMasq",
}
PATHS = ["loopback", "veth", "bridge", "bridge+nat", "plumb", "plumb+nat"]
PATH_LABEL = {
    "loopback": "loopback, one namespace",
    "veth": "veth pair, two namespaces (no bridge)",
    "bridge": "hand-built bridge, two namespaces",
    "bridge+nat": "hand-built bridge + nft masquerade → outside",
    "plumb": "plumb network, c-1 ↔ c-2",
    "plumb+nat": "plumb egress NAT, c-2 → outside",
}


def read_tsv(path, ncols):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                fields = line.split("\t")
                rows.append(fields + [""] * (ncols - len(fields)))
    return rows


def fmt(x, digits=2):
    return f"{x:.{digits}f}"


def mark(text, ok):
    """A number whose check failed stays visible but struck through, never silently presented as good."""
    return text if ok else f"~~{text}~~ INVALID"


def ratio(value, base, ok):
    """value / plumb's value, or – where plumb has no valid number."""
    if not base:
        return "–"
    return mark(f"{value / base:.1f}×", ok)


def control_section(work, meta):
    rows = read_tsv(os.path.join(work, "control.tsv"), 8)
    if not rows:
        return []
    groups = {}  # (method, n) -> list of rows
    skipped = {}  # (method, n) -> reason
    for m, n, run, s, t, sst, tst, note in rows:
        if sst == "skipped":
            skipped[(m, int(n))] = note
            continue
        groups.setdefault((m, int(n)), []).append((float(s), float(t), sst == "ok", tst == "ok", note))
    sizes = sorted({k[1] for k in groups} | {k[1] for k in skipped})
    out = ["## Control plane", ""]
    out.append("| N | method | runs | setup s | setup ms/ctr | teardown s | teardown ms/ctr "
               "| setup × plumb | teardown × plumb | checks |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    notes = []
    for n in sizes:
        base = None  # plumb's per-container (setup, teardown) medians; None where there is no valid one
        if ("plumb", n) in groups:
            g = groups[("plumb", n)]
            base = (statistics.median(x[0] for x in g) / n if all(x[2] for x in g) else None,
                    statistics.median(x[1] for x in g) / n if all(x[3] for x in g) else None)
        for m in METHODS:
            label = METHOD_LABEL[m]
            if (m, n) in skipped:
                out.append(f"| {n} | {label} | 0 | – | – | – | – | – | – | skipped: {skipped[(m, n)]} |")
                continue
            if (m, n) not in groups:
                continue
            g = groups[(m, n)]
            s_med = statistics.median(x[0] for x in g)
            t_med = statistics.median(x[1] for x in g)
            s_ok = all(x[2] for x in g)
            t_ok = all(x[3] for x in g)
            rs = ratio(s_med / n, base and base[0], s_ok)
            rt = ratio(t_med / n, base and base[1], t_ok)
            bad = sum(1 for x in g if not (x[2] and x[3]))
            checks = "ok" if bad == 0 else f"{bad}/{len(g)} runs failed (see notes)"
            out.append(
                f"| {n} | {label} | {len(g)} | {mark(fmt(s_med), s_ok)} | {mark(fmt(s_med / n * 1000, 1), s_ok)} "
                f"| {mark(fmt(t_med), t_ok)} | {mark(fmt(t_med / n * 1000, 1), t_ok)} | {rs} | {rt} | {checks} |")
            for x in g:
                if x[4] and x[4] not in [nn[1] for nn in notes if nn[0] == (m, n)]:
                    notes.append(((m, n), x[4]))
    out.append("")
    if notes:
        out.append("Per-run remarks (each distinct remark once):")
        out.append("")
        for (m, n), text in notes:
            out.append(f"- {m}, N={n}: {text.strip().rstrip(';')}")
        out.append("")
    return out


def dataplane_section(work, meta):
    rows = read_tsv(os.path.join(work, "dataplane.tsv"), 5)
    if not rows:
        return []
    res = {}
    skipped = {}
    for path, streams, bps, status, note in rows:
        if status == "skipped":
            skipped[path] = note
        else:
            res[(path, streams)] = (float(bps) / 1e9 if bps else None, status == "ok", note)
    out = ["## Data plane", ""]
    out.append(f"iperf3 TCP, `-t {meta.get('dp_seconds', '?')}`, one test per cell; Gbit/s received "
               "(`end.sum_received.bits_per_second` of `iperf3 -J`), ratio to the hand-built bridge.")
    out.append("")
    out.append("| path | 1 stream Gbit/s | × bridge | 2 streams Gbit/s | × bridge |")
    out.append("|---|---:|---:|---:|---:|")
    for path in PATHS:
        if path in skipped:
            out.append(f"| {PATH_LABEL[path]} | – | – | – | – |")
            continue
        cells = []
        for streams in ("1", "2"):
            v = res.get((path, streams))
            ref = res.get(("bridge", streams))
            if not v or v[0] is None:
                cells += ["INVALID" if v else "–", "–"]
                continue
            ratio = f"{v[0] / ref[0]:.2f}" if ref and ref[0] and ref[1] else "–"
            cells += [mark(fmt(v[0]), v[1]), ratio]
        out.append(f"| {PATH_LABEL[path]} | " + " | ".join(cells) + " |")
    out.append("")
    for path, note in skipped.items():
        out.append(f"- {path}: skipped: {note}")
    for (path, streams), (_, ok, note) in res.items():
        if not ok:
            out.append(f"- {path} -P {streams}: INVALID: {note}")
    if skipped or any(not v[1] for v in res.values()):
        out.append("")
    return out


def main():
    work = sys.argv[1]
    meta = dict(r[:2] for r in read_tsv(os.path.join(work, "meta.tsv"), 2))
    out = [f"# plumb benchmark ({meta.get('mode', '?')}; N = {meta.get('sizes', '?').replace(' ', ', ')})", ""]
    out.append(f"{meta.get('date', '?')}; kernel {meta.get('kernel', '?')}, {meta.get('cpus', '?')} CPUs; "
               f"plumb: {meta.get('plumb_version', '?')}; {meta.get('netavark', '?')}; "
               f"containernetworking-plugins {meta.get('cni', '?')}; {meta.get('iproute2', '?')}; "
               f"{meta.get('iperf3', '?')}.")
    out.append("")
    out += control_section(work, meta)
    out += dataplane_section(work, meta)
    runs = meta.get("runs", "?")
    big = any(int(n) >= 1000 for n in meta.get("sizes", "").split())
    runs_note = (f"{runs} run(s) per method and N" if meta.get("runs_forced") == "1" or not big
                 else f"{runs} runs per method and N, except bash `ip`, netavark and CNI at N≥1000: "
                      f"{meta.get('peer_runs_1000', '?')} runs")
    out += [
        "## Notes",
        "",
        f"- Medians over {runs_note}. Runs are interleaved (run r of plumb, ip, batch, netavark, cni, then run r+1) "
        "so that drifts of the machine hit all methods alike.",
        "- Each run: N bare containers (namespace `bench-c-I`, veth, `eth0` address in 10.200.0.0/16, default "
        "route via 10.200.0.1 on the bridge, lo up) on one bridge network with egress NAT. Setup time includes "
        "creating the bridge and the NAT rule; teardown time includes removing them (the CNI bridge is deleted by "
        "the harness: the plugin never does). ms/ctr = total / N.",
        "- Teardown is timed until the kernel has really removed the links: after the method returns, the harness "
        "polls `ip -o link | wc -l` (every 10 ms, after the first second every 50 ms) until it is back to the sandbox's baseline (deleting a namespace "
        "destroys its veth asynchronously).",
        "- Checked in every run: N namespaces and N host veths exist; the first and last container ping the "
        "gateway 10.200.0.1 and, through the NAT, the `outside` namespace 203.0.113.2; after teardown no "
        "namespace or link is left. A failed check strikes the number through and marks it INVALID. nft tables "
        "a method leaves behind are deleted by the harness before the next method and listed above.",
        "- Everything runs in a throwaway network + mount namespace (private tmpfs on /run); `outside` "
        "(203.0.113.2, behind uplink up0) stands for the internet.",
        "",
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
