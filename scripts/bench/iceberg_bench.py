#!/usr/bin/env python3
"""Hive against Iceberg (issue 30): one worker reads the same events (one
event-hour) from N shards of the replay endpoint (`shardlake-loadtest
replay-kinesis`, from memory), once into a hive lake and once into an
Iceberg table (local SQL catalog), with the same flush rule. Per run: the
commits it made (hive: one checkpoint commit per shard flush; Iceberg: one
table snapshot per `commit_interval`) and their rate, data files per
hour partition, CPU seconds and CPU per GB of input, and the table's
snapshots and rows as pyiceberg reads them. Then the Iceberg table is
compacted (scripts/iceberg_compact.py, the Glue optimizer's stand-in):
files per hour partition, and the files, bytes and time of a one-hour
query (pyiceberg's plan, then its read), before and after.

usage: iceberg_bench.py --bin DIR --input FILE --schema FILE --dir DIR
                        [--shards 4,64] [--max-age 10s] [--commit-interval 10s]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
from consumer_bench import COMMITTED, fresh_dir, lake_rows, metric_sum, start_replay_endpoint  # noqa: E402
from iceberg_catalog import load_table  # noqa: E402
from iceberg_compact import files_by_hour, hour_filter  # noqa: E402

TABLE_COMMITS = "shardlake_consumer_table_commits_total"
FLUSHES = "shardlake_consumer_flushes_total"


def iceberg_view(url):
    t = load_table(url)
    snapshots = list(t.snapshots())
    files = sum(int(s.summary.additional_properties.get("added-data-files", 0)) for s in snapshots)
    return {"rows": t.scan().to_arrow().num_rows, "snapshots": len(snapshots), "files": files}


def hour_query(url):
    """The busiest hour partition: files and bytes the one-hour query plans,
    and its read time (median of 3)."""
    t = load_table(url)
    column, by_hour = files_by_hour(t)
    hour = max(by_hour, key=lambda h: len(by_hour[h]))
    scan = t.scan(row_filter=hour_filter(column, hour))
    planned = list(scan.plan_files())
    times = []
    for _ in range(3):
        start = time.monotonic()
        rows = scan.to_arrow().num_rows
        times.append(time.monotonic() - start)
    return {"files": len(planned), "bytes": sum(f.file.file_size_in_bytes for f in planned), "rows": rows,
            "seconds": sorted(times)[1], "hours": len(by_hour),
            "files_per_hour": sum(map(len, by_hour.values())) / len(by_hour)}


def compacted(url):
    """One-hour query before and after compacting the table."""
    before = hour_query(url)
    out = subprocess.run([sys.executable, os.path.join(HERE, "..", "iceberg_compact.py"), url],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    after = hour_query(url)
    if after["rows"] != before["rows"]:
        sys.exit(f"compaction changed the hour's rows: {before} -> {after}")
    return {"before": before, "after": after, "compaction": report}


def run(a, shards, fmt, events):
    a.shards = shards
    replay, endpoint = start_replay_endpoint(a)
    try:
        lake = os.path.abspath(fresh_dir(a, f"{fmt}{shards}-lake"))
        checkpoints = os.path.abspath(fresh_dir(a, f"{fmt}{shards}-checkpoints"))
        catalog = os.path.join(lake, "catalog.db")
        table = (f'table_format = "iceberg"\ncatalog = "sqlite://{catalog}/bench/events"\ncatalog_create = true\n'
                 f'commit_interval = "{a.commit_interval}"\n') if fmt == "iceberg" else ""
        config = os.path.join(a.dir, f"{fmt}{shards}.toml")
        with open(config, "w") as f:
            f.write(f'stream = "replay"\ndestination = "{lake}"\ncheckpoint_store = "file://{checkpoints}"\n'
                    f'schema = "{a.schema}"\ntime_field = "ts"\n{table}'
                    f'[buffer]\nmax_age = "{a.max_age}"\n'
                    f'[polling]\nidle_interval = "1s"\nshard_refresh = "30s"\n[metrics]\naddress = "127.0.0.1:0"\n')
        log = os.path.join(a.dir, f"{fmt}{shards}.log")
        env = dict(os.environ, AWS_ENDPOINT_URL_KINESIS=endpoint)
        with open(log, "w") as err:
            proc = subprocess.Popen([f"{a.bin}/shardlake-consumer", "run", "--config", config],
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
        start = time.monotonic()
        while metric_sum(log, COMMITTED) < events:
            if proc.poll() is not None:
                sys.exit(f"consumer exited early:\n{open(log).read()[-3000:]}")
            if time.monotonic() - start > 1800:
                proc.kill()
                sys.exit(f"timed out at {shards} shards ({fmt})")
            time.sleep(0.2)
        wall = time.monotonic() - start
        flushes = metric_sum(log, FLUSHES)
        table_commits = metric_sum(log, TABLE_COMMITS)
        proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"consumer failed at shutdown:\n{open(log).read()[-3000:]}")
        files = sum(1 for r, _, names in os.walk(os.path.join(lake, "data") if fmt == "iceberg" else lake)
                    for n in names if n.endswith(".parquet"))
        url = f"sqlite://{catalog}/bench/events"
        if fmt == "iceberg":
            view = iceberg_view(url)
            rows, commits = view["rows"], view["snapshots"]
            assert view["files"] == files, f"{view} against {files} files on disk"
        else:
            rows, commits = lake_rows(lake), flushes
        if rows != events:
            sys.exit(f"{fmt}, {shards} shards: {rows} rows, expected {events}")
        cpu = usage.ru_utime + usage.ru_stime
        return {"format": fmt, "shards": shards, "wall": wall, "commits": commits,
                "per_min": commits / wall * 60, "files": files, "cpu": cpu,
                "cpu_per_gb": cpu / (a.input_bytes / 1e9), "table_commits": table_commits,
                "compacted": compacted(url) if fmt == "iceberg" else None}
    finally:
        replay.terminate()
        replay.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--schema", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--shards", default="4,64")
    ap.add_argument("--max-age", default="10s")
    ap.add_argument("--commit-interval", default="10s")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    a.schema = os.path.abspath(a.schema)
    a.input_bytes = os.path.getsize(a.input)
    events = sum(1 for _ in open(a.input))
    rows = [run(a, int(n), fmt, events) for n in a.shards.split(",") for fmt in ("hive", "iceberg")]
    print(f"{events} events ({a.input_bytes / 1e6:.0f} MB, one event-hour), one worker, "
          f"buffer.max_age = {a.max_age}, commit_interval = {a.commit_interval}")
    print(f"{'format':<8} {'shards':>6} {'run s':>6} {'commits':>8} {'per min':>8} {'files/hour':>11} "
          f"{'CPU s':>6} {'CPU s/GB':>9}")
    for r in rows:
        print(f"{r['format']:<8} {r['shards']:>6} {r['wall']:>6.1f} {r['commits']:>8.0f} {r['per_min']:>8.1f} "
              f"{r['files']:>11} {r['cpu']:>6.2f} {r['cpu_per_gb']:>9.2f}")
    print()
    print("Iceberg, one-hour query on the busiest hour, before and after compaction (pyiceberg plan and read):")
    print(f"{'shards':>6} {'':<7} {'files/hour':>10} {'files read':>10} {'MB read':>8} {'read s':>7}")
    for r in rows:
        if r["compacted"]:
            for when in ("before", "after"):
                q = r["compacted"][when]
                print(f"{r['shards']:>6} {when:<7} {q['files_per_hour']:>10.1f} {q['files']:>10} "
                      f"{q['bytes'] / 1e6:>8.2f} {q['seconds']:>7.3f}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
