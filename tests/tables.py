"""Checks on a results directory's tables that several tests share."""

from pathlib import Path

import pandas as pd


def assert_every_table_reads_in_duckdb(results: Path) -> int:
    """Every table of `results` reads whole in DuckDB and in Polars by a glob over its parts, without
    options (no union_by_name, no schema hints): one version of the project writes every part with
    the table's whole schema. Row counts and columns equal pandas'. Returns the number of tables read."""
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    from orchestrator.results import read_table

    tables = sorted(p for p in Path(results).glob("*/*.parquet") if p.is_dir())
    assert tables, f"no tables under {results}"
    for table in tables:
        parts = sorted(p for p in table.glob("*.parquet") if not p.name.startswith("."))
        schemas = {str(pq.read_schema(p).remove_metadata()) for p in parts}
        assert len(schemas) == 1, (table, schemas)  # one schema: no part lacks or adds a column
        pattern = str(table / "[!._]*.parquet")  # parts only (never hidden temporaries)
        relation = duckdb.sql(f"SELECT * FROM read_parquet('{pattern}')")
        rows = relation.fetchall()  # every column of every part
        assert len(rows) == len(pd.read_parquet(table)), table
        assert list(relation.columns) == list(read_table(table).columns), table
        frame = pl.read_parquet(pattern)  # Polars' glob: every part, their schemas must agree
        assert frame.shape == (len(rows), len(relation.columns)), table
    return len(tables)
