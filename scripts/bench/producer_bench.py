#!/usr/bin/env python3
"""Runs shardlake-producer and the boto3 put_records loop on the same records
against kinesalite (and, if given, an endpoint that accepts every PutRecords at
once, to show each client's own ceiling), interleaved, and reports records/s, CPU seconds per
million records (user + sys of the client process tree) and the emulator's
CPU seconds per million records during each run, with same-run ratios.

With `--slow URL=UPSTREAM=LABEL` (repeatable) it also runs both clients, with
their defaults, against slow endpoints (kinesis-local, kinesalite behind a
1 MB/s link, kinesalite behind a link that holds a fifth of the requests
3-10 s) and reads each stream back from UPSTREAM: records stored, duplicates
and missing `event_id`s, the producer's request timeouts, unknown outcomes
and records expired before their first attempt, and the trace of its concurrency limit (and of its
records per request, when requests outlast the timeout).

usage: producer_bench.py --producer BIN --input FILE --records N --runs R --shards S
                         [--instant-endpoint URL] [--slow URL=UPSTREAM=LABEL ...]
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time

import boto3

HERE = os.path.dirname(os.path.abspath(__file__))


def proc_cpu(pid):
    """User + sys CPU seconds of a process and its live children (emulator)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def listener_pid(port):
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


def make_stream(client, name, shards):
    client.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + 60
    while client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            sys.exit(f"stream {name} not ACTIVE after 60 s")
        time.sleep(0.1)


def measure(cmd, env, emulator_pid, timeout):
    emu0 = proc_cpu(emulator_pid) if emulator_pid else 0.0
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit(f"timed out after {timeout} s: {' '.join(cmd)}")
    wall = time.monotonic() - start
    emu = (proc_cpu(emulator_pid) - emu0) if emulator_pid else float("nan")
    # The child is reaped by communicate(); its rusage is in RUSAGE_CHILDREN.
    return out, wall, emu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--producer", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--instant-endpoint", help="also measure against scripts/bench/instant_kinesis.py at this URL")
    ap.add_argument("--slow", action="append", default=[], metavar="URL=UPSTREAM=LABEL",
                    help="also run both clients with defaults against this slow endpoint, reading back from UPSTREAM")
    ap.add_argument("--skip-fast", action="store_true", help="only the --slow endpoints")
    ap.add_argument("--slow-runs", type=int, help="runs per slow endpoint (default: --runs)")
    a = ap.parse_args()
    if not a.skip_fast:
        bench(a, os.environ["SHARDLAKE_KINESALITE_ENDPOINT"], "kinesalite")
    if a.instant_endpoint:
        print()
        bench(a, a.instant_endpoint, "instant endpoint")
    for i, spec in enumerate(a.slow):
        url, upstream, label = spec.split("=", 2)
        if i or not a.skip_fast:
            print()
        slow_bench(a, url, upstream, label)


ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,6})\d*Z")
LIMIT = re.compile(r"limit=(\d+)")
MAX_ENTRIES = re.compile(r"max_entries=(\d+)")


def read_back(client, stream):
    """(records stored, duplicated event_ids, distinct event_ids) of a stream."""
    seen, stored = {}, 0
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        it = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for _ in range(100_000):
            page = client.get_records(ShardIterator=it, Limit=10000)
            for r in page["Records"]:
                stored += 1
                eid = json.loads(r["Data"])["event_id"]
                seen[eid] = seen.get(eid, 0) + 1
            it = page.get("NextShardIterator")
            if not it or (not page["Records"] and page.get("MillisBehindLatest", 0) == 0):
                break
    return stored, sum(n - 1 for n in seen.values()), len(seen)


def limit_trace(log):
    """The concurrency limit over the run, from the producer's debug log:
    `limit@seconds` at each change, and the records-per-request changes."""
    changes, start = [], None
    for line in log.splitlines():
        line = ANSI.sub("", line)
        m = LOG_TIME.match(line)
        if not m:
            continue
        t = datetime.datetime.fromisoformat(m.group(1)).timestamp()
        start = t if start is None else start
        limit, size = LIMIT.search(line), MAX_ENTRIES.search(line)
        if "concurrency limit changed" in line and limit:
            changes.append(f"{limit.group(1)}@{t - start:.1f}s")
        elif "records per request changed" in line and size:
            changes.append(f"[{size.group(1)} rec/request]@{t - start:.1f}s")
    return changes


def slow_bench(a, url, upstream, label):
    """Both clients with their defaults against a slow endpoint; each stream
    read back from `upstream`."""
    env = dict(os.environ, AWS_ENDPOINT_URL_KINESIS=url, RUST_LOG="shardlake_producer=debug")
    kinesis = boto3.client("kinesis", endpoint_url=upstream)
    tag = f"{os.getpid()}-{int(time.time())}"
    tools = {
        "shardlake": lambda s: [a.producer, "--stream", s, "--input", a.input, "--partition-key-field", "user_id",
                                "--json"],
        "boto3": lambda s: [sys.executable, os.path.join(HERE, "boto3_put_records.py"), s, a.input],
    }
    rows = {name: [] for name in tools}
    trace = []
    runs = a.slow_runs or a.runs
    for run in range(runs):
        for name, cmd in tools.items():
            stream = f"slow-{name}-{tag}-{run}"
            make_stream(kinesis, stream, a.shards)
            start = time.monotonic()
            proc = subprocess.run(cmd(stream), env=env, capture_output=True, text=True, timeout=a.timeout)
            wall = time.monotonic() - start
            if proc.returncode not in (0, 1):
                sys.exit(f"{name} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            stored, duplicates, distinct = read_back(kinesis, stream)
            timeouts = sum(1 for l in proc.stderr.splitlines() if "request failed" in l and "Timeout" in l)
            rows[name].append({"rate": a.records / wall, "stored": stored, "dup": duplicates,
                               "missing": a.records - distinct, "timeouts": timeouts,
                               "unknown": summary.get("unknown_outcome", 0), "failed": summary.get("failed", 0),
                               "unsent": summary.get("expired_unsent", float("nan"))})
            if name == "shardlake" and run == runs - 1:
                trace = limit_trace(proc.stderr)
            kinesis.delete_stream(StreamName=stream)
    print(f"{a.records} records into {label}, {a.shards} shards, both clients with defaults, "
          f"medians of {runs} interleaved runs (read back from {upstream})")
    print(f"{'client':<10} {'records/s':>10} {'stored':>8} {'duplicates':>11} {'missing':>8} {'timeouts':>9} "
          f"{'unknown':>8} {'failed':>7} {'expired unsent':>15}")
    med = {}
    for name, rs in rows.items():
        med[name] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        r = med[name]
        print(f"{name:<10} {r['rate']:>10.0f} {r['stored']:>8.0f} {r['dup']:>11.0f} {r['missing']:>8.0f} "
              f"{r['timeouts'] if name == 'shardlake' else float('nan'):>9.0f} {r['unknown']:>8.0f} {r['failed']:>7.0f} "
              f"{r['unsent']:>15.0f}")
    print(f"ratio shardlake/boto3: {med['shardlake']['rate'] / med['boto3']['rate']:.2f}x records/s")
    shown = trace if len(trace) <= 24 else trace[:12] + ["..."] + trace[-12:]
    print(f"shardlake concurrency limit (last run; starts at 1): {' '.join(shown) or 'stayed at 1'}")


def bench(a, endpoint, label):
    env = dict(os.environ, AWS_ENDPOINT_URL_KINESIS=endpoint)
    kinesis = boto3.client("kinesis", endpoint_url=endpoint)
    emulator_pid = listener_pid(int(endpoint.rsplit(":", 1)[1]))
    tag = f"{os.getpid()}-{int(time.time())}"
    tools = {
        # kinesalite enforces no shard limit and neither does the boto3 loop:
        # the producer's per-shard limiter is off for a like-for-like run.
        "shardlake": lambda s: [a.producer, "--stream", s, "--input", a.input, "--rate-limit-percent", "0", "--json"],
        "boto3": lambda s: [sys.executable, os.path.join(HERE, "boto3_put_records.py"), s, a.input],
    }
    results = {name: [] for name in tools}
    for run in range(a.runs):
        for name, cmd in tools.items():
            stream = f"bench-{name}-{tag}-{run}"
            make_stream(kinesis, stream, a.shards)
            before = os.times()
            out, wall, emu = measure(cmd(stream), env, emulator_pid, a.timeout)
            after = os.times()
            cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
            summary = json.loads(out.decode().strip().splitlines()[-1])
            if summary["sent"] != a.records or summary["failed"]:
                sys.exit(f"{name} sent {summary['sent']} of {a.records}, failed {summary['failed']}")
            results[name].append({"wall": wall, "cpu": cpu, "emu": emu})
            kinesis.delete_stream(StreamName=stream)

    rows = {}
    for name, rs in results.items():
        wall = statistics.median(r["wall"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        emu = statistics.median(r["emu"] for r in rs)
        rows[name] = {
            "records_per_s": a.records / wall,
            "wall_s": wall,
            "cpu_s_per_m": cpu / a.records * 1e6,
            "emu_cpu_s_per_m": emu / a.records * 1e6,
        }
    print(f"{a.records} records ({os.path.getsize(a.input) / 1e6:.1f} MB) into {label}, {a.shards} shards, "
          f"medians of {a.runs} interleaved runs")
    print(f"{'client':<10} {'records/s':>10} {'wall s':>7} {'client CPU-s/M rec':>19} {'server CPU-s/M rec':>23}")
    for name, r in rows.items():
        print(f"{name:<10} {r['records_per_s']:>10.0f} {r['wall_s']:>7.2f} {r['cpu_s_per_m']:>19.1f} "
              f"{r['emu_cpu_s_per_m']:>23.1f}")
    s, b = rows["shardlake"], rows["boto3"]
    print(f"ratio shardlake/boto3: {s['records_per_s'] / b['records_per_s']:.2f}x records/s, "
          f"{b['cpu_s_per_m'] / s['cpu_s_per_m']:.1f}x less client CPU per record; "
          f"shardlake CPU is {s['cpu_s_per_m'] / s['emu_cpu_s_per_m']:.2f}x the server's")


if __name__ == "__main__":
    main()
