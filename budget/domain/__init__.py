"""The money domain both sides share, pure: events, prices, the caps config, commands, the ledger
(decide / apply) and reservation expiry. Imports no asyncio, sockets or DuckDB."""
