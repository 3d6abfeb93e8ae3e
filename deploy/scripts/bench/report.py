#!/usr/bin/env python3
"""Turns the raw results of deploy/scripts/bench/run.sh into BENCHMARKS.md,
results.json / results.csv (every run, machine, versions, commands) and a
latency chart (latency.png).

Run by run.sh with the matplotlib venv's python:
    report.py --work WORKDIR --out docs/bench --markdown BENCHMARKS.md
or again later, from the results.json of a run (e.g. after editing this file):
    report.py --from-results docs/bench/results.json --out docs/bench --markdown BENCHMARKS.md [--note TEXT]

WORKDIR holds raw/SYSTEM.PROTO.RATE.RUN.json (tether-load output; RATE is
"max" for the closed loop), processes.txt (system instance pid idle-VmRSS),
peak.txt (pid VmHWM VmRSS), versions.txt, machine.txt, settings.json.
"""

import argparse
import csv
import json
import math
import os
import statistics
import sys

PCTS = ["p50", "p90", "p99", "p99.9"]
SYSTEMS = ["direct", "tether", "tether-mtls", "nginx", "haproxy", "consul", "caddy",
           "tether-1hop", "nginx-1hop", "haproxy-1hop"]
LABEL = {
    "direct": "direct (no proxy)",
    "tether": "Tether, 2 sidecars, plaintext",
    "tether-mtls": "Tether, 2 sidecars, mTLS",
    "nginx": "nginx, 2 chained",
    "haproxy": "HAProxy, 2 chained",
    "consul": "Consul connect proxy, 2, mTLS (L4)",
    "caddy": "Caddy, 2 chained, mTLS (L7, HTTP/2 between)",
    "tether-1hop": "Tether, 1 sidecar",
    "nginx-1hop": "nginx, 1",
    "haproxy-1hop": "HAProxy, 1",
}
PROTO = {"h1": "HTTP/1.1 keep-alive", "h2": "HTTP/2 (h2c to the first hop)"}


def read_lines(path):
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def kv_file(path):
    out = {}
    for line in read_lines(path):
        k, _, v = line.partition(": ")
        out[k] = v
    return out


def saturated(r):
    """A fixed-rate point the system could not sustain (or that failed)."""
    return r["errors"] > 0 or r["achieved_rps"] < 0.95 * r["target_rate"]


def spread(xs, fmt):
    """median (min..max), formatted."""
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt(xs[0])
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}..{fmt(max(xs))})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", help="the work directory of run.sh")
    ap.add_argument("--out", required=True)
    ap.add_argument("--markdown", required=True)
    ap.add_argument("--from-results", help="rebuild from a results.json written earlier (instead of --work)")
    ap.add_argument("--note", help="a sentence for the setup section (also: env BENCH_NOTE)")
    a = ap.parse_args()
    if a.note:
        os.environ["BENCH_NOTE"] = a.note
    if a.from_results:
        a.work = unpack(a.from_results)
    elif not a.work:
        ap.error("--work or --from-results is required")
    work, out = a.work, a.out
    settings = json.load(open(os.path.join(work, "settings.json")))
    tick = settings["clock_ticks"]
    versions = kv_file(os.path.join(work, "versions.txt"))
    machine = kv_file(os.path.join(work, "machine.txt"))

    # ---- raw points -------------------------------------------------------
    points = []  # flat rows
    raw_all = {}  # name -> tether-load output, kept whole in results.json
    results = {}  # (system, proto, rate) -> {run: result}
    raw_dir = os.path.join(work, "raw")
    for name in sorted(os.listdir(raw_dir)):
        if not name.endswith(".json"):
            continue
        system, proto, rate, run = name[:-5].rsplit(".", 3)
        r = json.load(open(os.path.join(raw_dir, name)))
        raw_all[name[:-5]] = dict(r)
        ticks = [p["cpu_ticks"] for p in r["processes"]["list"]]
        cpu_s = sum(t for t in ticks if t is not None) / tick if r["processes"]["list"] else None
        ok = r["ok_in_window"]
        r["cpu_s"] = cpu_s
        r["cpu_s_per_10k"] = (cpu_s / ok * 10000) if (cpu_s is not None and ok) else None
        r["saturated"] = rate != "max" and saturated(r)
        r["system"], r["proto"], r["rate"], r["run"] = system, proto, rate, int(run)
        results.setdefault((system, proto, rate), {})[int(run)] = r
        row = {"system": system, "protocol": proto, "rate": rate, "run": int(run),
               "achieved_rps": round(r["achieved_rps"], 1), "count": r["count"],
               "errors": r["errors"], "saturated": r["saturated"]}
        row.update({k: r["latency_ms"][k] for k in PCTS + ["max"]})
        row["cpu_s_per_10k"] = None if r["cpu_s_per_10k"] is None else round(r["cpu_s_per_10k"], 4)
        points.append(row)

    systems = [s for s in SYSTEMS if any(k[0] == s for k in results)]
    rates = [str(x) for x in settings["rates"]]
    protos = settings["protocols"]

    # ---- processes: idle and peak memory ------------------------------------
    peak = {}
    for line in read_lines(os.path.join(work, "peak.txt")):
        pid, hwm, rss = line.split()
        peak[pid] = (int(hwm or 0), int(rss or 0))
    procs = {}  # system -> [(instance, pid, idle, hwm)]
    for line in read_lines(os.path.join(work, "processes.txt")):
        system, inst, pid, idle = line.split()
        procs.setdefault(system, []).append((inst, pid, int(idle or 0), peak.get(pid, (0, 0))[0]))

    # ---- aggregate ---------------------------------------------------------
    def fixed(system, proto, rate):
        """Runs that sustained the rate, and how many did not."""
        runs = results.get((system, proto, rate), {})
        good = {k: v for k, v in runs.items() if not v["saturated"]}
        return runs, good

    summary = {}
    for proto in protos:
        for rate in rates:
            _, base = fixed("direct", proto, rate)
            for s in systems:
                runs, good = fixed(s, proto, rate)
                if not runs:
                    continue
                entry = {"runs": len(runs), "saturated_runs": len(runs) - len(good),
                         "achieved_rps": [r["achieved_rps"] for r in runs.values()],
                         "errors": sum(r["errors"] for r in runs.values())}
                quoted = len(good) * 2 > len(runs)
                entry["saturated"] = not quoted
                if quoted:
                    entry["latency_ms"] = {k: [r["latency_ms"][k] for r in good.values()] for k in PCTS}
                    entry["added_ms"] = {k: [good[n]["latency_ms"][k] - base[n]["latency_ms"][k]
                                             for n in good if n in base] for k in PCTS}
                    entry["cpu_s_per_10k"] = [r["cpu_s_per_10k"] for r in good.values()
                                              if r["cpu_s_per_10k"] is not None]
                summary[f"{s}.{proto}.{rate}"] = entry
    for s in systems:
        runs = results.get((s, "h1", "max"), {})
        if runs:
            summary[f"{s}.h1.max"] = {
                "achieved_rps": [r["achieved_rps"] for r in runs.values()],
                "errors": sum(r["errors"] for r in runs.values()),
                "cpu_s_per_10k": [r["cpu_s_per_10k"] for r in runs.values() if r["cpu_s_per_10k"] is not None],
                "latency_ms_closed_loop": {k: [r["latency_ms"][k] for r in runs.values()] for k in PCTS},
            }

    os.makedirs(out, exist_ok=True)
    commands = read_lines(os.path.join(out, "commands.txt")) if os.path.exists(os.path.join(out, "commands.txt")) else []
    memory = {s: [{"instance": i, "idle_vm_rss_kib": idle, "peak_vm_hwm_kib": hwm} for i, _, idle, hwm in v]
              for s, v in procs.items()}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"settings": settings, "machine": machine, "versions": versions, "commands": commands,
                   "memory": memory, "summary": summary,
                   "runs": sorted(points, key=lambda p: (p["system"], p["protocol"], p["rate"], p["run"])),
                   "raw": raw_all},
                  f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(points[0].keys()))
        w.writeheader()
        for p in sorted(points, key=lambda p: (p["protocol"], p["rate"], p["run"], SYSTEMS.index(p["system"]))):
            w.writerow(p)

    chart(out, summary, systems, protos, rates, settings)
    markdown(a.markdown, out, summary, systems, protos, rates, settings, machine, versions, procs, points)


def unpack(results_json):
    """Recreates the work directory run.sh hands over, from a results.json."""
    import tempfile
    d = json.load(open(results_json))
    work = tempfile.mkdtemp(prefix="tether-report.")
    os.makedirs(os.path.join(work, "raw"))
    for name, r in d["raw"].items():
        with open(os.path.join(work, "raw", name + ".json"), "w") as f:
            json.dump(r, f)
    with open(os.path.join(work, "settings.json"), "w") as f:
        json.dump(d["settings"], f)
    for fname, kv in (("machine.txt", d["machine"]), ("versions.txt", d["versions"])):
        with open(os.path.join(work, fname), "w") as f:
            f.writelines(f"{k}: {v}\n" for k, v in kv.items())
    with open(os.path.join(work, "processes.txt"), "w") as p, open(os.path.join(work, "peak.txt"), "w") as k:
        for system, insts in d["memory"].items():
            for m in insts:
                pid = f"{system}/{m['instance']}"
                p.write(f"{system} {m['instance']} {pid} {m['idle_vm_rss_kib']}\n")
                k.write(f"{pid} {m['peak_vm_hwm_kib']} 0\n")
    return work


def chart(out, summary, systems, protos, rates, settings):
    """Grouped bars: per system, p50/p90/p99/p99.9 (median, min..max
    whiskers), one panel per protocol and rate; saturated systems marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(len(protos), len(rates), figsize=(6.5 * len(rates), 4.2 * len(protos)),
                             squeeze=False)
    colors = ["#4c72b0", "#55a868", "#dd8452", "#c44e52"]
    width = 0.2
    for i, proto in enumerate(protos):
        for j, rate in enumerate(rates):
            ax = axes[i][j]
            for x, s in enumerate(systems):
                e = summary.get(f"{s}.{proto}.{rate}")
                if e is None:
                    continue
                if e["saturated"]:
                    ax.text(x, 0.05, "saturated", rotation=90, ha="center", va="bottom", fontsize=8,
                            transform=ax.get_xaxis_transform(), color="#c44e52")
                    continue
                for k, pct in enumerate(PCTS):
                    xs = e["latency_ms"][pct]
                    m = statistics.median(xs)
                    ax.bar(x + (k - 1.5) * width, m, width, color=colors[k], label=pct if x == 0 else None,
                           yerr=[[m - min(xs)], [max(xs) - m]], capsize=2, error_kw={"linewidth": 0.8})
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
                lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
            ax.set_xticks(range(len(systems)))
            ax.set_xticklabels(systems, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("latency, ms (log)")
            ax.set_title(f"{PROTO[proto]}, {int(rate):,} rps", fontsize=10)
            ax.grid(axis="y", which="both", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8, ncol=4, loc="upper left")
    runs = settings["runs"]
    fig.suptitle(f"Latency from the intended send time, open loop, {settings['connections']} connections, "
                 f"{settings['body_bytes']} B answers; median of {runs} run{'s' if runs > 1 else ''}, "
                 f"whiskers min..max", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency.png"), dpi=110)


def markdown(path, out, summary, systems, protos, rates, settings, machine, versions, procs, points):
    ms = lambda v: f"{v:.3f}"
    plus = lambda v: f"{v:+.3f}"
    runs = settings["runs"]
    rel = os.path.relpath(out, os.path.dirname(os.path.abspath(path)) or ".")
    L = []
    L.append("# Benchmarks: Tether side by side with nginx, HAProxy and Consul's connect proxy\n")
    L.append("Generated by `deploy/scripts/bench/run.sh` (method: shared/BENCH.md). Every number below is "
             f"the **median of {runs} run{'s' if runs > 1 else ''}** with the spread (min..max) in parentheses. "
             f"Raw results (every run, machine, versions, exact commands): [`{rel}/results.json`]({rel}/results.json), "
             f"[`{rel}/results.csv`]({rel}/results.csv); proxy configs in [`{rel}/config/`]({rel}/config/).\n")
    if settings.get("quick"):
        L.append("> **Quick run** (`--quick`): one run, short points; for checking the harness, not for quoting.\n")
    L.append(f"![latency percentiles per system and rate]({rel}/latency.png)\n")

    L.append("## Setup\n")
    L.append(f"- Machine: {machine.get('nproc')} cores, {machine.get('cpu')}, {machine.get('memory')}, "
             f"{machine.get('kernel')}, {machine.get('os')}.")
    L.append(f"- Load before the run: `{machine.get('load before', '?').strip()}`; after: "
             f"`{machine.get('load after', '?').strip()}`.")
    if "other work before" in machine:
        L.append(f"- Other work on the machine with none of ours running: {machine['other work before'].split(' (')[0]} "
                 f"just before the run, {machine.get('other work after', '?').split(' (')[0]} just after "
                 "(5 s samples of /proc/stat).")
    note = os.environ.get("BENCH_NOTE")
    if note:
        L.append(f"- Note: {note}")
    L.append(f"- Pinning: {settings['pinned']}. All systems run during the whole benchmark; one carries load at a time.")
    L.append("- **Every proxy runs one worker thread**: `tether-proxy --worker-threads 1` (current-thread runtime), "
             "nginx `worker_processes 1` (and `master_process off`, so one process), HAProxy `nbthread 1`, "
             "Consul's proxy `GOMAXPROCS=1`.")
    L.append(f"- Backend (same for all): `tether-sample --body-size {settings['body_bytes']}` (hyper, HTTP/1.1 and h2c "
             "on one port), on core 0.")
    L.append(f"- Load: `tether-load` (examples/src/load.rs), open loop, wrk2 model: {settings['connections']} connections, "
             "each with its own fixed schedule; latency from the **intended** send time (corrected for coordinated "
             f"omission), HDR histogram. {settings['seconds']} s recorded per point after {settings['warmup_s']} s of "
             "warm-up at the same rate on the same connections. HTTP/2 points use h2c with prior knowledge to the "
             "first hop; every L7 proxy then speaks HTTP/1.1 keep-alive to the next hop (nginx cannot do otherwise; "
             "HAProxy and Tether keep their defaults); Consul's L4 proxy carries h2 end to end.")
    L.append(f"- Max throughput: closed loop, {settings['max_connections']} connections, HTTP/1.1, "
             f"{settings['max_seconds']} s per run. Load generator and backend share core 0, so `direct` is bounded by them.")
    L.append("- Systems alternate within each run (A B C … A B C …), each run starting one system later.")
    L.append("- Saturation: a point where the achieved rate was below 95 % of the target or any request failed is "
             "**saturated** and its latency is not quoted (latency at saturation is queueing, not the proxy). "
             "If only a minority of runs saturated, the others are quoted and the count is shown.")
    L.append("- Tether sidecars run from snapshot files (no control plane) with the default policy (timeouts, retries "
             "with a budget, p2c-ewma balancing, per-request metrics). mTLS: TLS 1.3, ECDSA P-256 identities from a "
             "throwaway dev CA (`tether-pki`), SPIFFE IDs verified both ways. Consul's proxies get their certificates "
             "from the dev agent's built-in CA (its default key type, ECDSA P-256); Go's TLS defaults negotiate TLS 1.3 (not checked per connection).\n")
    L.append("Versions:\n")
    for k, v in versions.items():
        L.append(f"- {k}: {v}")
    L.append("")

    for proto in protos:
        for rate in rates:
            L.append(f"## {PROTO[proto]} at {int(rate):,} rps: latency added over direct (ms)\n")
            L.append("| system | +p50 | +p90 | +p99 | +p99.9 | achieved rps | CPU s / 10k req (all its proxies) |")
            L.append("|---|---|---|---|---|---|---|")
            for s in systems:
                e = summary.get(f"{s}.{proto}.{rate}")
                if e is None:
                    continue
                ach = spread(e["achieved_rps"], lambda v: f"{v:,.0f}")
                if e["saturated"]:
                    L.append(f"| {LABEL[s]} | **saturated** ({e['saturated_runs']}/{e['runs']} runs) | | | | {ach} | |")
                    continue
                note = f" ({e['saturated_runs']}/{e['runs']} runs saturated, not counted)" if e["saturated_runs"] else ""
                if s == "direct":
                    cells = [f"{spread(e['latency_ms'][k], ms)} abs." for k in PCTS]
                    L.append(f"| {LABEL[s]}{note} | " + " | ".join(cells) + f" | {ach} | – |")
                    continue
                cells = [spread(e["added_ms"][k], plus) for k in PCTS]
                cpu = spread(e["cpu_s_per_10k"], lambda v: f"{v:.3f}")
                L.append(f"| {LABEL[s]}{note} | " + " | ".join(cells) + f" | {ach} | {cpu} |")
            L.append("")

    L.append("## Throughput and resources\n")
    L.append(f"Max rps: closed loop, {settings['max_connections']} connections, HTTP/1.1. CPU: utime+stime of all of "
             "the system's proxy processes over the recorded window (`/proc/PID/stat`), per 10,000 requests; "
             "CPU s per 10k requests ÷ 10 = vCPU per 1,000 rps. Memory per proxy process: VmRSS when idle (after a "
             "few requests, before load) and VmHWM (peak) at the end of the whole benchmark.\n")
    first_rate = rates[0]
    L.append(f"| system | max rps | CPU s / 10k req at max | CPU s / 10k req, HTTP/1.1 {int(first_rate):,} rps | "
             "idle VmRSS per proxy (MiB) | peak VmHWM per proxy (MiB) |")
    L.append("|---|---|---|---|---|---|")
    for s in systems:
        m = summary.get(f"{s}.h1.max")
        fr = summary.get(f"{s}.h1.{first_rate}")
        mx = spread(m["achieved_rps"], lambda v: f"{v:,.0f}") if m else "–"
        if m and m["errors"]:
            mx += f" ({m['errors']} errors)"
        cpu_max = spread(m["cpu_s_per_10k"], lambda v: f"{v:.3f}") if m and m["cpu_s_per_10k"] else "–"
        cpu_fr = spread(fr["cpu_s_per_10k"], lambda v: f"{v:.3f}") if fr and fr.get("cpu_s_per_10k") else "–"
        p = procs.get(s, [])
        idle = ", ".join(f"{i} {idle / 1024:.1f}" for i, _, idle, _ in p) or "–"
        hwm = ", ".join(f"{i} {h / 1024:.1f}" for i, _, _, h in p) or "–"
        L.append(f"| {LABEL[s]} | {mx} | {cpu_max} | {cpu_fr} | {idle} | {hwm} |")
    L.append("")
    L.append("Single-hop processes are the second hop of the two-hop chain (Tether's api sidecar, nginx B, "
             "HAProxy B), so their peak memory is the same process's. Consul has no single-hop variant: its "
             "built-in proxy only carries mesh traffic from one Connect proxy to another (client side: a local "
             "upstream listener; server side: an mTLS public listener), so one hop would not be a mesh path.\n")

    L.append("## What is and is not compared (honest framing)\n")
    L.append("What the peers do here that Tether does not have to, or the other way round, in this measured setup:\n")
    L.append("- **nginx and HAProxy run without TLS** between their hops. Compare them with `tether` (plaintext), "
             "not with `tether-mtls`; the BENCH.md goal is that `tether-mtls` adds less p99 than plain HAProxy.")
    L.append("- **nginx and HAProxy route on nothing**: one upstream, no per-request policy, no access log, no metrics "
             "per request (nginx `access_log off`). Tether, in the same runs, routes by authority (`Host: api`), "
             "applies a whole-request timeout, budgeted retries and p2c-ewma balancing with outlier tracking, and "
             "counts every request in Prometheus histograms (`tether_request_duration_seconds`).")
    L.append("- **Consul's built-in proxy is L4 only**: it forwards TCP bytes inside mTLS. No HTTP parsing, routing, "
             "retries, timeouts per request or per-request metrics; HTTP/2 passes through it untouched end to end. "
             "It does verify identities (Connect certificates) and checks intentions when a connection is opened.")
    L.append("- **Tether with mTLS** verifies the peer's SPIFFE identity on every connection both ways (the client "
             "checks the server is `api`; the server reads the caller's identity and applies authorization), "
             "on TLS 1.3 with ECDSA P-256, and pools connections between sidecars so handshakes are rare.")
    L.append("- Consul's agent (its control plane) runs on core 0 during the whole benchmark, with the load "
             "generator and backend, for every system alike; Tether's sidecars here run from snapshot files with no "
             "control plane.")
    L.append("- Everything is on loopback on one 2-core machine: absolute latencies are lower than across a network, "
             "and the two proxies of a chain share one core. Ratios against `direct` in the same run mean more "
             "than the absolute times.\n")

    L.append("## Reproduce\n")
    L.append("```sh")
    L.append("deploy/scripts/bench/run.sh            # full run: RUNS=3, 30 s per point (prints an estimate, ~65 min here)")
    L.append("deploy/scripts/bench/run.sh --quick    # every system once, 5 s per point, results in bench-results/quick/")
    L.append("RUNS=5 SECONDS=60 BODY=64k deploy/scripts/bench/run.sh")
    L.append("deploy/scripts/bench/profile.sh       # callgrind: instructions per request, Tether vs nginx vs HAProxy (MTLS=1: + mTLS sidecar)")
    L.append("# rebuild this page and the chart from the raw results:")
    L.append("~/.cache/tether/bench-venv/bin/python deploy/scripts/bench/report.py --from-results docs/bench/results.json \\")
    L.append("    --out docs/bench --markdown BENCHMARKS.md")
    L.append("```\n")
    L.append(f"This run: `{settings['env']} {settings['command']}`, {settings['elapsed_s'] // 60} min. "
             f"Exact process and load-generator commands: [`{rel}/commands.txt`]({rel}/commands.txt).\n")
    # The other benchmark scripts (control plane, tracing, mTLS, one hop)
    # print their numbers; their latest results are kept by hand in
    # more.md beside the raw data and appended here, so a rerun of this
    # report never drops them.
    more = os.path.join(out, "more.md")
    if os.path.exists(more):
        with open(more) as f:
            L.append(f.read().rstrip("\n") + "\n")
    with open(path, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    sys.exit(main())
