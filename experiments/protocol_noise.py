"""How the timing protocol's round length and anchor frequency set the noise (issue 14, item 1).

    python -m experiments.protocol_noise [--sessions 4] [--threads 1] [--out DIR]

Eight fixed students (1-6 layers, hidden 64-384) are timed with `latency.profile.measure`, the one
protocol the table, validation, verification and the run report use, under several protocols
that all spend the same timed seconds per model (1.5 s): few long rounds against many short ones,
the anchor every 8 / 4 models. Sessions alternate between the protocols (A B C A B C ...) so that
a slow spell of the machine hits each alike. Per session and model the anchor-relative latency
(the table's statistic over the session's median anchor: what a table stores and a later session
compares after scaling by its own anchor) is recorded. What matters for a prediction made in one
session and checked in another is how much that ratio moves between sessions: the
cross-session coefficient of variation, per model, reported beside the split-half noise within a
session and each session's wall time. Raw: OUT/sessions.json, OUT/summary.{csv,json}; OUT defaults
to experiments/results/<today>_protocol_noise."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from autodistil.stats import cv_pct
from experiments.common import dated

PROTOCOLS = {
    "3x0.5s-anchor8": dict(rounds=3, round_s=0.5, warmup_s=0.1, anchor_every=8),  # the old default
    "12x0.125s-anchor8": dict(rounds=12, round_s=0.125, warmup_s=0.03, anchor_every=8),
    "12x0.125s-anchor4": dict(rounds=12, round_s=0.125, warmup_s=0.03, anchor_every=4),  # the default now
    "24x0.0625s-anchor4": dict(rounds=24, round_s=0.0625, warmup_s=0.02, anchor_every=4),
}
SPECS = [
    (2, 128, 4, 256),
    (4, 128, 4, 512),
    (3, 192, 6, 576),
    (5, 256, 8, 768),
    (2, 320, 10, 1280),
    (4, 384, 12, 1536),
    (6, 256, 8, 1024),
    (1, 64, 2, 192),
]


def summarise(sessions: list, protocols: dict = PROTOCOLS) -> list[dict]:
    """One row per protocol: mean / max cross-session CV of the anchor-relative latency over the
    models, mean split-half noise, mean anchor spread and session seconds."""
    rows = []
    for p in dict.fromkeys(s["protocol"] for s in sessions):
        ss = [s for s in sessions if s["protocol"] == p]
        if len(ss) < 2:
            continue
        cvs = {k: cv_pct([s["ratio"][k] for s in ss]) for k in ss[0]["ratio"]}
        raw = {k: cv_pct([s["raw_ratio"][k] for s in ss]) for k in ss[0]["raw_ratio"]}  # no per-run anchor
        rows.append(
            {
                "protocol": p,
                **protocols.get(p, {}),
                "sessions": len(ss),
                "cross_session_cv_pct_mean": statistics.mean(cvs.values()),
                "cross_session_cv_pct_max": max(cvs.values()),
                "cross_session_cv_pct_unnormalised_mean": statistics.mean(raw.values()),
                "split_half_sd_pct_mean": statistics.mean(s["noise_sd_pct"] for s in ss),
                "anchor_spread_pct_mean": statistics.mean(s["anchor_spread_pct"] for s in ss),
                "session_s_mean": statistics.mean(s["seconds"] for s in ss),
                "cv_pct_per_model": {k: round(v, 2) for k, v in cvs.items()},
            }
        )
    return rows


def write_summary(out: Path, sessions: list, protocols: dict = PROTOCOLS) -> list[dict]:
    from autodistil.io import atomic_write_json, write_rows_csv

    rows = summarise(sessions, protocols)
    write_rows_csv(
        out / "summary.csv", [{k: v for k, v in r.items() if k != "cv_pct_per_model"} for r in rows]
    )
    atomic_write_json(out / "summary.json", rows)
    for r in rows:
        print(
            f"{r['protocol']:>20}: cross-session CV mean {r['cross_session_cv_pct_mean']:.2f} % (max "
            f"{r['cross_session_cv_pct_max']:.2f}), raw runs over the session's median anchor (no per-run "
            f"normalisation) {r['cross_session_cv_pct_unnormalised_mean']:.2f} %, split-half sd "
            f"{r['split_half_sd_pct_mean']:.2f} %, {r['session_s_mean']:.1f} s per session"
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=4, help="sessions per protocol (>= 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    ap.add_argument("--out", default=None, help="default experiments/results/<today>_protocol_noise")
    ap.add_argument(
        "--summary-only", action="store_true", help="recompute the summary from OUT/sessions.json"
    )
    a = ap.parse_args(argv)
    if a.sessions < 2:
        ap.error("--sessions must be >= 2 (the CV is across sessions)")
    if a.summary_only and not a.out:
        ap.error("--summary-only needs --out: the folder whose sessions.json to summarise")
    out = Path(a.out) if a.out else dated("protocol_noise")
    if a.summary_only:
        rec = json.loads((out / "sessions.json").read_text())
        write_summary(out, rec["sessions"], rec.get("protocols", PROTOCOLS))
        return 0
    import torch
    from autodistil.io import atomic_write_json
    from autodistil.latency.profile import ModelSpec, ProfileSettings, TorchDevice, measure
    from autodistil.machine import cpu_model, loadavg

    out.mkdir(parents=True, exist_ok=True)
    specs = [ModelSpec(*x) for x in SPECS]
    anchor = ModelSpec(2, 256, 8, 768, "autodistil")
    sessions = []
    for i in range(a.sessions * len(a.protocols)):
        p = a.protocols[i % len(a.protocols)]
        st = ProfileSettings(threads=a.threads, **PROTOCOLS[p])
        dev = TorchDevice(st, 32)
        runners = {f"L{s.layers}-H{s.hidden}-A{s.heads}-F{s.ffn}": dev.runner(s) for s in specs}
        load = loadavg()
        sess = measure(runners, st, dev, dev.runner(anchor), seed=i)
        a_ms = sess.anchor["ms"]
        rec = {
            "protocol": p,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "loadavg_before": load,
            "threads": sess.threads,
            "seconds": sess.seconds,
            "noise_sd_pct": sess.noise()["sd_pct"],
            "anchor_ms": a_ms,
            "anchor_spread_pct": sess.anchor["spread_pct"],
            "ratio": {k: t.ms / a_ms for k, t in sess.timings.items()},
            "raw_ratio": {k: t.raw_median / a_ms for k, t in sess.timings.items()},
            "ms": {k: t.ms for k, t in sess.timings.items()},
        }
        sessions.append(rec)
        print(
            f"[{i + 1}/{a.sessions * len(a.protocols)}] {p}: {rec['seconds']:.1f} s, split-half sd "
            f"{rec['noise_sd_pct']:.2f} %, anchor spread {rec['anchor_spread_pct']:.1f} %",
            flush=True,
        )
        atomic_write_json(
            out / "sessions.json",
            {
                "cpu": cpu_model(),
                "torch": torch.__version__,
                "threads": a.threads,
                "anchor": [anchor.layers, anchor.hidden, anchor.heads, anchor.ffn],
                "protocols": {k: PROTOCOLS[k] for k in a.protocols},
                "sessions": sessions,
            },
        )
    write_summary(out, sessions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
