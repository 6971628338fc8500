#!/usr/bin/env python3
"""Consumer benchmark (issue 4), against kinesalite on 127.0.0.1.

Throughput: pre-fills a stream with the generated events, then, interleaved
`--runs` times, runs `convert` on the same events file, `convert` on each
shard's records separately (the files the consumer writes: one per shard and
partition, without Kinesis), `shardlake-consumer run` from kinesalite until
every record is read, and the consumer again from
`shardlake-loadtest replay-kinesis` replaying the same file from memory (the
emulator out of the way); prints medians of CPU seconds (user + sys), CPU
seconds per GB and MB per CPU-second, the ratios, the emulator's own CPU over
the consumer run, and how the consumer's extra CPU splits between per-shard
files and reading Kinesis (where the time goes). `--replay-only` skips
kinesalite and the latency run (for inputs too large to pre-fill it).

Latency: a fresh stream, the consumer running with `buffer.max_age = 5s`, and
events sent at a steady rate with `ts` set to their send time; each row's
produce-to-lake latency is its data file's mtime (written just before the
commit) minus its `ts`. Prints p50 / p99 / max.

usage: consumer_bench.py --bin DIR --input FILE --schema FILE --dir DIR
                         [--shards 4] [--rate 2000] [--seconds 20] [--runs 3]
                         [--emulator-pid PID | --replay-only]
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """user + sys CPU seconds of a running process (and its reaped children)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def create_stream(kinesis, name, shards):
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150})


def put_all(kinesis, stream, lines, key=lambda i, line: str(i)):
    for i in range(0, len(lines), 500):
        entries = [{"Data": l, "PartitionKey": key(i + j, l)} for j, l in enumerate(lines[i:i + 500])]
        for attempt in range(30):
            out = kinesis.put_records(StreamName=stream, Records=entries)
            entries = [e for e, r in zip(entries, out["Records"]) if "ErrorCode" in r]
            if not entries:
                break
            time.sleep(min(2.0, 0.05 * 2 ** attempt))
        else:
            sys.exit("records could not be put")


def write_config(path, stream, lake, checkpoints, schema, max_age, extra=""):
    # Absolute: the consumer resolves relative paths against the config's folder.
    lake, checkpoints, schema = (os.path.abspath(p) for p in (lake, checkpoints, schema))
    with open(path, "w") as f:
        f.write(f'stream = "{stream}"\ndestination = "{lake}"\ncheckpoint_store = "file://{checkpoints}"\n'
                f'schema = "{schema}"\ntime_field = "ts"\n{extra}'
                f'[buffer]\nmax_age = "{max_age}"\n[polling]\nidle_interval = "200ms"\nshard_refresh = "2s"\n'
                f'[metrics]\naddress = "127.0.0.1:0"\n')


COMMITTED = ("shardlake_consumer_records_written_total", "shardlake_consumer_records_errored_total")
READ = ("shardlake_consumer_records_read_total",)


def metric_sum(log, names):
    m = re.search(r"metrics on http://([0-9.:]+)", open(log).read())
    if not m:
        return 0
    text = urllib.request.urlopen(f"http://{m.group(1)}/metrics", timeout=5).read().decode()
    return int(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(names)))


def run_consumer(bin_dir, config, log, want, deadline_s, on_started=None, until=COMMITTED, env=None):
    """Runs the consumer until the `until` counters reach `want`, then stops it
    with SIGTERM (which flushes and commits whatever is buffered); returns
    (wall seconds until it exited, consumer CPU seconds)."""
    with open(log, "w") as err:
        proc = subprocess.Popen([f"{bin_dir}/shardlake-consumer", "run", "--config", config],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    start = time.monotonic()
    if on_started:
        on_started()
    while metric_sum(log, until) < want:
        if proc.poll() is not None:
            sys.exit(f"consumer exited early:\n{open(log).read()}")
        if time.monotonic() - start > deadline_s:
            proc.kill()
            sys.exit(f"timed out: {metric_sum(log, until)} of {want} records")
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"consumer failed at shutdown:\n{open(log).read()}")
    return wall, usage.ru_utime + usage.ru_stime


def lake_rows(lake):
    import pyarrow.parquet as pq
    return sum(pq.ParquetFile(os.path.join(r, n)).metadata.num_rows
               for r, _, names in os.walk(lake) for n in names if n.endswith(".parquet") and not n.startswith("."))


def start_replay_endpoint(a):
    """`shardlake-loadtest replay-kinesis` serving the input file from memory
    (dealt round-robin to a.shards shards); returns (process, endpoint URL)
    once it listens."""
    proc = subprocess.Popen([f"{a.bin}/shardlake-loadtest", "replay-kinesis", "--input", a.input,
                             "--shards", str(a.shards)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"the replay endpoint did not start: {line!r}")
    return proc, line.split()[-1]


def fresh_dir(a, name):
    """A new directory for one run's lake or checkpoints. Nothing is deleted
    until the benchmark ends: on a journal-less ext4 (as on the 2-core dev
    machine) creating a file scans the inodes deleted in the last 30 s, so
    deleting the last run's lake just before a run made each new file cost
    ~1 ms of kernel CPU, most of all for the consumer, which writes a file per
    shard and partition."""
    runs = os.path.join(a.dir, "runs")
    os.makedirs(runs, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{name}-", dir=runs)


def consume_all(a, stream, want, name, env=None, extra=""):
    """One consumer run over a whole stream (fresh lake and checkpoints):
    (wall, CPU seconds); the lake's row count is checked."""
    lake, checkpoints = fresh_dir(a, f"{name}-lake"), fresh_dir(a, f"{name}-checkpoints")
    config = os.path.join(a.dir, f"{name}.toml")
    # Batches as large as convert's: read everything, then SIGTERM flushes it all.
    write_config(config, stream, lake, checkpoints, a.schema, "300s", extra)
    wall, cpu = run_consumer(a.bin, config, os.path.join(a.dir, f"{name}.log"), want, 1800, until=READ, env=env)
    rows = lake_rows(lake)
    if rows != want:
        sys.exit(f"the consumer's lake ({name}) has {rows} rows, expected {want}")
    return wall, cpu


def run_convert(a, inputs):
    """`convert` of each input into its own fresh lake, one after another:
    (wall seconds, CPU seconds) summed."""
    wall = cpu = 0.0
    for path in inputs:
        out = fresh_dir(a, "convert-lake")
        t = time.monotonic()
        proc = subprocess.Popen([f"{a.bin}/shardlake-consumer", "convert", "--input", path, "--destination",
                                 out, "--schema", a.schema, "--time-field", "ts", "--quiet"],
                                stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        wall += time.monotonic() - t
        cpu += usage.ru_utime + usage.ru_stime
    return wall, cpu


def split_by_shard(a, lines):
    """The input dealt round-robin to `a.shards` files, as the replay
    endpoint deals it to shards: `convert` of each gives the consumer's files
    (one per shard and partition) without Kinesis."""
    paths = [os.path.join(a.dir, f"shard-{n}-of-{a.shards}.jsonl") for n in range(a.shards)]
    for n, path in enumerate(paths):
        with open(path, "wb") as f:
            f.writelines(l + b"\n" for l in lines[n::a.shards])
    return paths


def throughput(a, kinesis):
    lines = [l.rstrip(b"\n") for l in open(a.input, "rb") if l.strip()]
    size = os.path.getsize(a.input)
    shard_inputs = split_by_shard(a, lines)
    stream = f"bench-{int(time.time())}"
    if not a.replay_only:
        create_stream(kinesis, stream, a.shards)
        t = time.monotonic()
        put_all(kinesis, stream, lines)
        print(f"pre-filled {stream}: {len(lines)} records, {size / 1e6:.1f} MB, {a.shards} shards, "
              f"in {time.monotonic() - t:.1f} s")
    replay, endpoint = start_replay_endpoint(a)
    runs = {"convert": [], "convert_shards": [], "kinesalite": [], "emulator": [], "replay": [], "evolve": []}
    try:
        for _ in range(a.runs):
            runs["convert"].append(run_convert(a, [a.input]))
            runs["convert_shards"].append(run_convert(a, shard_inputs))
            if not a.replay_only:
                emu_before = proc_cpu(a.emulator_pid)
                runs["kinesalite"].append(consume_all(a, stream, len(lines), "consumer"))
                runs["emulator"].append(proc_cpu(a.emulator_pid) - emu_before)
            replay_env = dict(os.environ, AWS_ENDPOINT_URL_KINESIS=endpoint)
            runs["replay"].append(consume_all(a, "replay", len(lines), "replay", env=replay_env))
            # The same with schema evolution on: every record is watched for
            # new fields (the events have none, so no column is added).
            runs["evolve"].append(consume_all(a, "replay", len(lines), "evolve", env=replay_env,
                                              extra='unknown_fields = "evolve"\n'))
    finally:
        replay.terminate()
        replay.wait()

    med = lambda key, i: statistics.median(p[i] for p in runs[key]) if runs[key] else None
    convert_cpu, shards_cpu, cpu, replay_cpu = (med(k, 1) for k in ("convert", "convert_shards", "kinesalite", "replay"))
    emu_cpu = statistics.median(runs["emulator"]) if runs["emulator"] else None
    gb = size / 1e9
    print()
    print(f"{len(lines)} events, {size / 1e6:.1f} MB, {a.shards} shards; medians of {a.runs} interleaved runs")
    print(f"{'':<32} {'CPU s':>8} {'CPU s/GB':>9} {'MB/CPU-s':>9} {'wall s':>8} {'MB/s wall':>10}")
    rows = [("convert (file)", "convert"), ("convert, each shard's records", "convert_shards"),
            ("consumer (kinesalite)", "kinesalite"), ("consumer (replay endpoint)", "replay"),
            ("consumer (replay, evolve)", "evolve")]
    for name, key in rows:
        if runs[key]:
            c, w = med(key, 1), med(key, 0)
            print(f"{name:<32} {c:>8.2f} {c / gb:>9.1f} {size / 1e6 / c:>9.1f} {w:>8.1f} {size / 1e6 / w:>10.1f}")
    if not a.replay_only:
        print(f"{'kinesalite (emulator)':<32} {emu_cpu:>8.2f} {emu_cpu / gb:>9.1f} {'':>9} "
              f"{'(during the consumer run)':>19}")
        print(f"consumer per-core rate vs convert: {convert_cpu / cpu:.2f}x from kinesalite, "
              f"{convert_cpu / replay_cpu:.2f}x from the replay endpoint (target >= 0.8x)")
        print(f"consumer wall time: {med('kinesalite', 0):.1f} s from kinesalite, which was busy {emu_cpu:.1f} "
              f"CPU s meanwhile on a {os.cpu_count()}-core machine")
    else:
        print(f"consumer per-core rate vs convert: {convert_cpu / replay_cpu:.2f}x from the replay endpoint "
              f"(target >= 0.8x)")
    evolve_cpu = med("evolve", 1)
    print(f"unknown_fields = \"evolve\" (every record watched for new fields, none found): "
          f"{(evolve_cpu / replay_cpu - 1) * 100:+.0f}% CPU over the same consumer run (replay endpoint)")
    # Where the consumer's extra CPU goes: writing a file per shard and
    # partition (the exactly-once contract), then reading Kinesis.
    extra = replay_cpu - convert_cpu
    print(f"of the consumer's extra {extra:.2f} CPU s over convert (replay endpoint): "
          f"{shards_cpu - convert_cpu:.2f} s writing a file per shard and partition "
          f"(convert of each shard's records: {convert_cpu / shards_cpu:.2f}x of convert's rate), "
          f"{replay_cpu - shards_cpu:.2f} s reading Kinesis and running the shard readers")
    return {"records": len(lines), "bytes": size, "runs": runs, "convert_cpu": convert_cpu,
            "convert_shards_cpu": shards_cpu, "consumer_cpu": cpu, "replay_cpu": replay_cpu,
            "emulator_cpu": emu_cpu, "evolve_cpu": evolve_cpu, "ratio": convert_cpu / cpu if runs["kinesalite"] else None,
            "ratio_replay": convert_cpu / replay_cpu}


def latency(a, kinesis):
    import pyarrow.parquet as pq
    lines = [json.loads(l) for l in open(a.input, "rb") if l.strip()]
    total = min(len(lines), a.rate * a.seconds)
    stream = f"latency-{int(time.time())}"
    create_stream(kinesis, stream, a.shards)
    lake, cps = fresh_dir(a, "latency-lake"), fresh_dir(a, "latency-checkpoints")
    config = os.path.join(a.dir, "latency.toml")
    write_config(config, stream, lake, cps, a.schema, "5s")
    sent = {}

    def send():
        batch = max(1, a.rate // 20)  # 20 PutRecords calls per second
        start = time.monotonic()
        for n, i in enumerate(range(0, total, batch)):
            target = start + n / 20
            time.sleep(max(0.0, target - time.monotonic()))
            now = datetime.datetime.now(datetime.timezone.utc)
            recs = []
            for e in lines[i:i + batch]:
                e = dict(e, ts=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
                recs.append(json.dumps(e).encode())
            put_all(kinesis, stream, recs, key=lambda j, l: str(i + j))
        sent["seconds"] = time.monotonic() - start

    time.sleep(0.5)
    run_consumer(a.bin, config, os.path.join(a.dir, "latency.log"), total, 600, on_started=send)
    lat = []
    for root, _, names in os.walk(lake):
        for name in names:
            if name.endswith(".parquet") and not name.startswith("."):
                path = os.path.join(root, name)
                mtime = os.stat(path).st_mtime
                ts = pq.read_table(path, columns=["ts"]).column("ts").to_pylist()
                lat.extend(mtime - t.timestamp() for t in ts)
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print()
    print(f"produce-to-lake latency, {len(lat)} records sent at {total / sent['seconds']:.0f}/s over "
          f"{sent['seconds']:.1f} s, buffer.max_age = 5s: p50 {p(0.5):.2f} s, p99 {p(0.99):.2f} s, "
          f"max {lat[-1]:.2f} s")
    return {"records": len(lat), "p50": p(0.5), "p99": p(0.99), "max": lat[-1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--schema", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--emulator-pid", type=int, help="kinesalite's pid (not with --replay-only)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--replay-only", action="store_true",
                    help="throughput from the replay endpoint only: no kinesalite runs, no latency")
    a = ap.parse_args()
    if a.emulator_pid is None and not a.replay_only:
        ap.error("--emulator-pid is required unless --replay-only")
    a.schema = os.path.abspath(a.schema)
    kinesis = boto3.client("kinesis")
    shutil.rmtree(os.path.join(a.dir, "runs"), ignore_errors=True)
    try:
        results = {"throughput": throughput(a, kinesis)}
        if not a.replay_only:
            results["latency"] = latency(a, kinesis)
    finally:
        shutil.rmtree(os.path.join(a.dir, "runs"), ignore_errors=True)
    with open(os.path.join(a.dir, "consumer-results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
