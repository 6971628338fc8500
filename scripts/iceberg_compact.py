"""Compacts an Iceberg table of hour partitions the way the Glue optimizer
or Athena's OPTIMIZE do, as a second writer beside shardlake's workers:
each hour partition with at least --min-files data files is read and
rewritten as one file in a single overwrite commit (pyiceberg), which
readers see all at once. A commit that loses a race with a worker's append
(or that finds a worker added files to the hour meanwhile) is redone on the
new table. The tests' and benchmarks' stand-in for the
Glue optimizer, which does not run locally.

Usage: iceberg_compact.py CATALOG_URL [--min-files N] [--rounds N]
Prints JSON: partitions compacted, data files before and after, commits,
and conflicts redone."""
import argparse
import datetime
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iceberg_catalog import load_table  # noqa: E402
from pyiceberg.exceptions import CommitFailedException, ValidationException  # noqa: E402


def hour_filter(column, hour):
    start = datetime.datetime.fromtimestamp(hour * 3600, datetime.UTC)
    end = start + datetime.timedelta(hours=1)
    return f"{column} >= '{start.isoformat()}' and {column} < '{end.isoformat()}'"


def files_by_hour(table):
    spec = table.spec()
    [field] = [f for f in spec.fields if str(f.transform) == "hour"] or [None]
    if field is None:
        raise SystemExit(f"{table.name()}: partitioned by {spec}, not hour(...): this stand-in compacts hours only")
    column = table.schema().find_column_name(field.source_id)
    position = spec.fields.index(field)
    out = defaultdict(list)
    for task in table.scan().plan_files():
        out[task.file.partition[position]].append(task.file.file_path)
    return column, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--min-files", type=int, default=2)
    parser.add_argument("--retries", type=int, default=20)
    args = parser.parse_args()
    table = load_table(args.url)
    column, before = files_by_hour(table)
    done = {"partitions": 0, "files_before": sum(map(len, before.values())), "commits": 0, "conflicts_redone": 0}
    for hour, files in sorted(before.items()):
        if hour is None or len(files) < args.min_files:
            continue
        for attempt in range(args.retries + 1):
            table.refresh()
            row_filter = hour_filter(column, hour)
            rows = table.scan(row_filter=row_filter).to_arrow()
            try:
                table.overwrite(rows, overwrite_filter=row_filter,
                                snapshot_properties={"shardlake.compaction": str(hour)})
                break
            # A worker's commit landed first: pyiceberg retries the commit
            # itself, and fails it when the worker added files to this hour
            # (its overwrite would drop them); both are redone from a fresh read.
            except (CommitFailedException, ValidationException):
                if attempt == args.retries:
                    raise
                done["conflicts_redone"] += 1
        done["partitions"] += 1
        done["commits"] += 1
    table.refresh()
    done["files_after"] = sum(map(len, files_by_hour(table)[1].values()))
    print(json.dumps(done))


if __name__ == "__main__":
    main()
