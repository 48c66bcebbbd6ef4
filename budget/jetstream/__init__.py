"""The foundation of partitioned enforcement on a NATS JetStream cluster: which partition holds a user
(`partitions`, the server's mapping reproduced), the partition streams (`streams`), and a fenced lease per
partition in JetStream's key-value store (`lease`, pure; `kv_lease`, its NATS shell). The partitioned
enforcer that will stand on them is not built yet (README, "Scaling out")."""
