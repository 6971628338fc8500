#!/usr/bin/env python3
"""Consumer scale benchmark (issue 18): one worker reads the same events from
4, 64, 256 and 1,000 shards of the replay endpoint
(`shardlake-loadtest replay-kinesis`, answering from memory) with a fixed
memory budget, and the table shows what the shard count costs: CPU seconds
to read and commit everything, peak RSS against the bound
`memory_budget_mb + read_buffer_mb + overhead`, files written, and the CPU of
the same worker idling over the read-out shards. Batches flush by age
(`--max-age`, 10 s) while the run goes on, as on a live stream, and a run
ends when every record is committed.

usage: scale_bench.py --bin DIR --input FILE --schema FILE --dir DIR
                      [--shards 4,64,256,1000] [--budget-mb 64] [--read-buffer-mb 64] [--idle-seconds 20]
                      [--max-age 10s]
"""
import argparse
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from consumer_bench import COMMITTED, TICK, fresh_dir, lake_rows, metric_sum, start_replay_endpoint  # noqa: E402


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(a, shards, events):
    a.shards = shards
    replay, endpoint = start_replay_endpoint(a)
    try:
        lake, checkpoints = fresh_dir(a, f"scale{shards}-lake"), fresh_dir(a, f"scale{shards}-checkpoints")
        config = os.path.join(a.dir, f"scale{shards}.toml")
        # Absolute: the consumer resolves relative paths against the config's folder.
        lake, checkpoints, schema = (os.path.abspath(p) for p in (lake, checkpoints, a.schema))
        with open(config, "w") as f:
            f.write(f'stream = "replay"\ndestination = "{lake}"\ncheckpoint_store = "file://{checkpoints}"\n'
                    f'schema = "{schema}"\ntime_field = "ts"\n'
                    f'[buffer]\nmax_age = "{a.max_age}"\nmax_mb = {a.budget_mb}\nmemory_budget_mb = {a.budget_mb}\n'
                    f'read_buffer_mb = {a.read_buffer_mb}\n'
                    f'[polling]\nidle_interval = "1s"\nshard_refresh = "30s"\n[metrics]\naddress = "127.0.0.1:0"\n')
        log = os.path.join(a.dir, f"scale{shards}.log")
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
                sys.exit(f"timed out at {shards} shards")
            time.sleep(0.2)
        read_wall = time.monotonic() - start
        # Every record is committed and every shard read to its end: what
        # idling over them costs.
        busy = cpu_seconds(proc.pid)
        time.sleep(a.idle_seconds)
        idle = cpu_seconds(proc.pid) - busy
        proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"consumer failed at shutdown:\n{open(log).read()[-3000:]}")
        rows = lake_rows(lake)
        if rows != events:
            sys.exit(f"{shards} shards: the lake has {rows} rows, expected {events}")
        files = sum(1 for r, _, names in os.walk(lake) for n in names if n.endswith(".parquet"))
        cpu = usage.ru_utime + usage.ru_stime - idle
        return {"shards": shards, "read_wall": read_wall, "cpu": cpu, "rss_mib": usage.ru_maxrss / 1024,
                "files": files, "idle_cpu_pct": 100 * idle / a.idle_seconds}
    finally:
        replay.terminate()
        replay.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--schema", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--shards", default="4,64,256,1000")
    ap.add_argument("--budget-mb", type=int, default=64)
    ap.add_argument("--read-buffer-mb", type=int, default=64)
    ap.add_argument("--idle-seconds", type=int, default=20)
    ap.add_argument("--max-age", default="10s")
    a = ap.parse_args()
    a.schema = os.path.abspath(a.schema)
    events = sum(1 for _ in open(a.input))
    rows = [run(a, int(n), events) for n in a.shards.split(",")]
    bound = a.budget_mb + a.read_buffer_mb
    print(f"{events} events, memory_budget_mb = {a.budget_mb}, read_buffer_mb = {a.read_buffer_mb}, "
          f"max_age = {a.max_age}")
    print(f"{'shards':>6} {'commit s':>8} {'CPU s':>8} {'peak RSS MiB':>13} {'over budgets':>13} {'files':>7} "
          f"{'idle CPU %':>11}")
    for r in rows:
        print(f"{r['shards']:>6} {r['read_wall']:>8.1f} {r['cpu']:>8.2f} {r['rss_mib']:>13.0f} "
              f"{r['rss_mib'] - bound:>13.0f} {r['files']:>7} {r['idle_cpu_pct']:>11.1f}")


if __name__ == "__main__":
    main()
