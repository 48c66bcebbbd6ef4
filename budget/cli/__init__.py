"""The budget side of the `margins` command line: `enforce` and `spend`.

sim.cli mounts these commands on the one `margins` group (budget never imports sim), importing each
module only when its command runs: `margins spend` starts without loading the enforcer.
"""

from __future__ import annotations

# command name -> "module:attribute" of its click command
LAZY_COMMANDS: dict[str, str] = {
    "spend": "budget.cli.spend:spend",
    "enforce": "budget.cli.enforce:enforce",
}
