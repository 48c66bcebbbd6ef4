"""Defaults of the enforcer's knobs that the command line shows in its help: a module without imports, so
`margins enforce --help` does not load numpy to print them."""

SNAPSHOT_EVERY_EVENTS = 100_000  # a restart replays at most about this many events after the snapshot
SNAPSHOT_EVERY_S = 600.0  # and a quiet enforcer still snapshots what it took in the last ten minutes
