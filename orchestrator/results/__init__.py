"""Results: flat rows -> Parquet tables under a results directory (store.py), each table's schema
(schemas.py), where a row came from (provenance.py), and the lock that gives a directory one writer
(runlock.py). Workers never write tables; the driver does, through ResultStore.
"""

from orchestrator.results.store import (ABORTED, DONE, FINISHED, FORMAT_VERSION, MARKER, STOPPED, ResultStore,
                                        StoreError, read_table, report_frame)

__all__ = ["ABORTED", "DONE", "FINISHED", "FORMAT_VERSION", "MARKER", "STOPPED", "ResultStore", "StoreError",
           "read_table", "report_frame"]
