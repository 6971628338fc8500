"""moto_server with the Glue Data Catalog's optimistic locking.

AWS Glue fails an UpdateTable whose VersionId is not the table's current
version with ConcurrentModificationException; moto 5.2.5 ignores VersionId.
Iceberg commits from a fleet of workers (and shardlake's column updates to a
Glue table) rely on that check, so the tests' Glue must make it too. Run
as moto_server: python3 scripts/moto_server.py -H 127.0.0.1 -p PORT.
"""

import threading

from moto.glue import responses
from moto.glue.exceptions import GlueClientError
from moto.server import main


class ConcurrentModificationException(GlueClientError):
    def __init__(self, message: str):
        super().__init__("ConcurrentModificationException", message)


_update_table = responses.GlueResponse.update_table
# One UpdateTable at a time, so the check and the update are one step.
_lock = threading.Lock()


def update_table(self):
    version = self.parameters.get("VersionId")
    with _lock:
        if version is not None:
            database = self.parameters.get("DatabaseName")
            name = (self.parameters.get("TableInput") or {}).get("Name")
            table = self.glue_backend.get_table(database, name)
            if str(table._current_version) != str(version):
                raise ConcurrentModificationException(
                    f"Update table failed due to concurrent modifications: version {version} is not the "
                    f"current {table._current_version}"
                )
        return _update_table(self)


responses.GlueResponse.update_table = update_table

if __name__ == "__main__":
    main()
