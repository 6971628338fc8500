"""Prints an Iceberg table of a local SQL catalog (read with pyiceberg): its
snapshots with the batches each holds, rows per hour, and an example query.
Usage: iceberg_table.py CATALOG_DB NAMESPACE.TABLE [MAX_ROWS]"""
import datetime
import json
import sys

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

db, name = sys.argv[1], sys.argv[2]
shown = int(sys.argv[3]) if len(sys.argv) > 3 else 8
table = SqlCatalog("shardlake", uri=f"sqlite:///{db}", warehouse="file:///tmp").load_table(name)
snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
print(f"Iceberg table {name}: {len(snapshots)} snapshots, partitioned by {table.spec()}")
print(f"{'snapshot':<20} {'committed (UTC)':<20} {'records':>8} {'files':>6}  batches")
for s in snapshots[:shown]:
    summary = s.summary.additional_properties
    batches = json.loads(summary.get("shardlake.batches", "[]"))
    when = datetime.datetime.fromtimestamp(s.timestamp_ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    first = batches[0] if batches else "-"
    more = f" (+{len(batches) - 1} more)" if len(batches) > 1 else ""
    print(f"{s.snapshot_id:<20} {when:<20} {summary.get('added-records', '0'):>8} "
          f"{summary.get('added-data-files', '0'):>6}  {first}{more}")
if len(snapshots) > shown:
    print(f"... {len(snapshots) - shown} more snapshots")

events = table.scan().to_arrow()
con = duckdb.connect()
con.register("events", events)
print()
print(f"{'hour (UTC)':<20} {'rows':>8}")
hours = con.sql("SELECT strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%d %H:00') h, count(*) FROM events "
                "GROUP BY 1 ORDER BY 1").fetchall()
for h, n in hours[:shown]:
    print(f"{h or '(no time)':<20} {n:>8}")
if len(hours) > shown:
    print(f"... {len(hours) - shown} more hours")
print(f"{'total':<20} {events.num_rows:>8}")

hour = table.scan(row_filter="ts >= '2024-03-15T05:00:00+00:00' and ts < '2024-03-15T06:00:00+00:00'")
print()
print("example query: one hour, pruned by hour(ts) (pyiceberg, then DuckDB on its Arrow table):")
print(f"  files read: {len(list(hour.plan_files()))} of "
      f"{sum(int(s.summary.additional_properties.get('added-data-files', 0)) for s in snapshots)}")
con.register("hour", hour.to_arrow())
con.sql("SELECT event_type, count(*) AS events, round(sum(amount), 2) AS revenue FROM hour "
        "GROUP BY ALL ORDER BY events DESC LIMIT 5").show()
