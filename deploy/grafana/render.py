#!/usr/bin/env python3
"""Draw panels of deploy/grafana/drover.json from scrapes record.py kept.

    pip install matplotlib
    deploy/grafana/render.py /tmp/drover-scrapes.jsonl docs/images/dashboard.png

No Grafana here: this re-computes twelve of the dashboard's panels (same
titles, same quantities: rates over 30 s, quantiles from histogram buckets)
from the recorded samples and lays them out as the dashboard does. It is a
picture of real values from one lab run, not a Grafana screenshot.
"""
import collections
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WINDOW = 30.0  # seconds, for rates and quantiles


def load(path):
    rows = [json.loads(l) for l in open(path)]
    t0 = min(r["t"] for r in rows)
    series = collections.defaultdict(list)  # (job, instance) -> [(t, samples)]
    for r in rows:
        if r.get("up"):
            series[(r["job"], r["instance"])].append((r["t"] - t0, r["samples"]))
    return series


def labels(key):
    if "{" not in key:
        return key, {}
    name, rest = key.split("{", 1)
    out = {}
    for part in rest.rstrip("}").split('",'):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v.strip('"')
    return name, out


def gauge(points, name, match=None):
    """[(t, value)] of one series (summed over label sets matching `match`)."""
    out = []
    for t, s in points:
        v = 0.0
        found = False
        for k, x in s.items():
            n, l = labels(k)
            if n == name and all(l.get(a) == b for a, b in (match or {}).items()):
                v += x
                found = True
        if found:
            out.append((t, v))
    return out


def rate(points, name, match=None):
    """Per-second increase over WINDOW of a counter."""
    g = gauge(points, name, match)
    out = []
    for i, (t, v) in enumerate(g):
        j = i
        while j > 0 and t - g[j - 1][0] <= WINDOW:
            j -= 1
        if j < i and t > g[j][0]:
            out.append((t, max(0.0, v - g[j][1]) / (t - g[j][0])))
    return out


def quantile(points, name, q, match=None):
    """histogram_quantile(q) of the buckets' increase over WINDOW."""
    by_le = collections.defaultdict(list)
    for t, s in points:
        for k, x in s.items():
            n, l = labels(k)
            if n == name + "_bucket" and all(l.get(a) == b for a, b in (match or {}).items()):
                by_le[l["le"]].append((t, x))
    les = sorted(by_le, key=lambda le: float("inf") if le == "+Inf" else float(le))
    if not les:
        return []
    times = [t for t, _ in by_le[les[0]]]
    out = []
    for i, t in enumerate(times):
        j = i
        while j > 0 and t - times[j - 1] <= WINDOW:
            j -= 1
        if j == i:
            continue
        inc = [(le, by_le[le][i][1] - by_le[le][j][1]) for le in les]
        total = inc[-1][1]
        if total <= 0:
            continue
        rank = q * total
        prev_le, prev_c = 0.0, 0.0
        for le, c in inc:
            upper = float("inf") if le == "+Inf" else float(le)
            if c >= rank:
                if upper == float("inf"):
                    out.append((t, prev_le))
                else:
                    frac = (rank - prev_c) / max(c - prev_c, 1e-12)
                    out.append((t, prev_le + (upper - prev_le) * frac))
                break
            prev_le, prev_c = upper, c
    return out


def draw(ax, title, lines, unit=""):
    ax.set_title(title, fontsize=9, loc="left")
    for label, pts in lines:
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1.2)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if unit:
        ax.set_ylabel(unit, fontsize=7)
    if any(p for _, p in lines):
        ax.legend(fontsize=6, loc="upper left")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: render.py SCRAPES.jsonl OUT.png")
    series = load(sys.argv[1])
    ctl = {k: v for k, v in series.items() if k[0] == "drover-controller"}
    agt = {k: v for k, v in series.items() if k[0] == "drover-agent"}
    fig, axes = plt.subplots(4, 3, figsize=(15, 12))
    a = iter(axes.flat)
    draw(next(a), "Leader", [(i, gauge(p, "drover_raft_leader")) for (_, i), p in ctl.items()])
    draw(next(a), "Term and leader changes",
         [(f"changes {i}", gauge(p, "drover_raft_leader_changes_total")) for (_, i), p in ctl.items()]
         + [("term", max((gauge(p, "drover_raft_term") for p in ctl.values()), key=len, default=[]))])
    draw(next(a), "Proposals by outcome (committed/s)",
         [(i, rate(p, "drover_raft_proposals_total", {"outcome": "committed"})) for (_, i), p in ctl.items()], "ops/s")
    draw(next(a), "Commit latency (p50, p99)",
         sum(([(f"p50 {i}", quantile(p, "drover_raft_proposal_commit_seconds", 0.5)),
               (f"p99 {i}", quantile(p, "drover_raft_proposal_commit_seconds", 0.99))]
              for (_, i), p in ctl.items()), []), "s")
    draw(next(a), "ReadIndex latency (p99)",
         [(i, quantile(p, "drover_raft_read_index_seconds", 0.99)) for (_, i), p in ctl.items()], "s")
    draw(next(a), "Database size", [(i, gauge(p, "drover_sled_size_bytes")) for (_, i), p in ctl.items()], "bytes")
    leader_view = max(ctl.values(), key=len) if ctl else []
    draw(next(a), "Replicas by phase",
         [(ph, gauge(leader_view, "drover_replicas", {"phase": ph}))
          for ph in ["Pending", "Running", "CrashLoopBackOff", "Failed", "Terminating"]])
    draw(next(a), "Placements (/s)",
         [(i, rate(p, "drover_scheduler_placements_total")) for (_, i), p in ctl.items()], "ops/s")
    draw(next(a), "Status batches (/s)",
         [(i, rate(p, "drover_dispatcher_status_batches_total")) for (_, i), p in ctl.items()], "ops/s")
    draw(next(a), "Agents: restarts (cumulative)",
         [(i, gauge(p, "drover_agent_restarts_total")) for (_, i), p in agt.items()])
    draw(next(a), "Agents: runtime start p99",
         [(i, quantile(p, "drover_agent_runtime_operation_seconds", 0.99, {"operation": "start"}))
          for (_, i), p in agt.items()], "s")
    draw(next(a), "Replica CPU (cores)",
         [(f"{i} {labels(k)[1].get('replica', '')}", [(t, s[k]) for t, s in p if k in s])
          for (_, i), p in agt.items()
          for k in sorted({k for _, s in p for k in s if k.startswith("drover_agent_replica_cpu_cores")})])
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=7)
    fig.suptitle("drover dashboard (deploy/grafana/drover.json), panels re-drawn from one lab run's scrapes", fontsize=11)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=80)


if __name__ == "__main__":
    main()
