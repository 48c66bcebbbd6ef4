"""The partitioned enforcer on a NATS JetStream cluster: `enforcer` (one process: a contender loop per
partition) and `owner` (one partition it holds: take over, decide, give up). README, "Scaling out"."""
