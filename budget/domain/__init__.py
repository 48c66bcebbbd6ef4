"""The money domain both sides share, pure: events, prices, the caps config, commands, the ledger
(decide / apply) and reservation expiry. Imports no asyncio, sockets or DuckDB. (The price catalog's
data comes from genai-prices, which loads an HTTP client for a price updater that margins never starts.)"""
