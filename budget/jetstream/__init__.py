"""Partitioned enforcement's parts on a NATS JetStream cluster: which partition holds a user
(`partitions`, the server's mapping reproduced), the partition streams (`streams`), a fenced lease per
partition in JetStream's key-value store (`lease`, pure; `kv_lease`, its NATS shell), and each partition's
journal (`journal_codec`, pure; `journal`, its NATS shell). The enforcer that stands on them is
budget.partitioned (README, "Scaling out")."""
