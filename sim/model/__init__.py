"""The simulator's pure core: the scenario schema, traffic, the cost levers (policies/), the engine and
its per-request reference, caps and forecasts. Imports no DuckDB, asyncio or sockets and reads no files."""
