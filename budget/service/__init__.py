"""The live enforcer: wire decoding and outgoing messages (pure), settings loading, and the Enforcer
(the asyncio service around the ledger and the store)."""
