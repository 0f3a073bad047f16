"""Checks on a results directory's tables that several tests share."""

from pathlib import Path

import pandas as pd


def assert_every_table_reads_in_duckdb(results: Path) -> int:
    """Every table of `results` reads whole in DuckDB by a glob over its parts, without union_by_name:
    one version of the project writes every part with the table's whole schema. Row counts equal
    pandas'. Returns the number of tables read."""
    import duckdb

    tables = sorted(p for p in Path(results).glob("*/*.parquet") if p.is_dir())
    assert tables, f"no tables under {results}"
    for table in tables:
        pattern = str(table / "[!._]*.parquet")  # parts only (never hidden temporaries)
        rows = duckdb.sql(f"SELECT * FROM read_parquet('{pattern}')").fetchall()  # every column of every part
        assert len(rows) == len(pd.read_parquet(table)), table
    return len(tables)
