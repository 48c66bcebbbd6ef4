"""The durable event store: write-ahead log, month-partitioned Parquet segments behind a manifest, and
the DuckDB queries that read them (SpendReader)."""
