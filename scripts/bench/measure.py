#!/usr/bin/env python3
"""Runs benchmark commands interleaved and reports medians of CPU seconds
(user + sys of the whole process tree), peak RSS and wall time, plus the
output size, as a table and as ratios against a reference command measured in
the same run (the machine is shared and noisy: only same-run ratios count).

usage: measure.py --input FILE --runs N --ref NAME -- NAME OUTDIR CMD... ;; NAME OUTDIR CMD...
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def run_once(cmd):
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}")
    # ru_maxrss is KiB on Linux; wait4 covers the child and its reaped children.
    return {"cpu": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024, "wall": wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--json-out")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    rest = a.rest[1:] if a.rest and a.rest[0] == "--" else a.rest
    tools, cur = [], []
    for tok in rest + [";;"]:
        if tok == ";;":
            if cur:
                tools.append({"name": cur[0], "out": cur[1], "cmd": cur[2:]})
            cur = []
        else:
            cur.append(tok)
    in_bytes = os.path.getsize(a.input)
    results = {t["name"]: [] for t in tools}
    for t in tools:  # warm-up: page cache, lazy imports
        run_once(t["cmd"])
    for _ in range(a.runs):
        for t in tools:
            results[t["name"]].append(run_once(t["cmd"]))
    rows = {}
    for t in tools:
        rs = results[t["name"]]
        cpu = statistics.median(r["cpu"] for r in rs)
        rows[t["name"]] = {
            "cpu_s": cpu,
            "wall_s": statistics.median(r["wall"] for r in rs),
            "peak_rss_mib": max(r["rss_mib"] for r in rs),
            "mb_per_cpu_s": in_bytes / 1e6 / cpu,
            "out_mb": du(t["out"]) / 1e6,
        }
    ref = rows[a.ref]
    print(f"input: {a.input} ({in_bytes / 1e6:.1f} MB), medians of {a.runs} runs after 1 warm-up")
    print(f"{'tool':<12} {'CPU s':>7} {'wall s':>7} {'MB/CPU-s':>9} {'peak RSS MiB':>13} {'out MB':>8} "
          f"{'speed vs ' + a.ref:>14} {'size vs ' + a.ref:>13}")
    for name, r in rows.items():
        print(f"{name:<12} {r['cpu_s']:>7.2f} {r['wall_s']:>7.2f} {r['mb_per_cpu_s']:>9.1f} {r['peak_rss_mib']:>13.0f} "
              f"{r['out_mb']:>8.1f} {r['mb_per_cpu_s'] / ref['mb_per_cpu_s']:>13.2f}x {r['out_mb'] / ref['out_mb']:>12.3f}x")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"input_bytes": in_bytes, "runs": a.runs, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
