"""The budget side of the `margins` command line: `enforce`, `alerts`, `spend`, `admin`, `status` and
`store`.

sim.cli mounts these commands on the one `margins` group (budget never imports sim). Each entry is
(name, "module:attribute" of its click command, its short help): `margins --help` lists the commands from
these texts and imports a command's module only when that command runs or shows its own help, so
`margins spend` starts without loading the enforcer.
"""

from __future__ import annotations

COMMANDS: tuple[tuple[str, str, str], ...] = (
    (
        "spend",
        "budget.cli.spend:spend",
        "What users spent: top spenders of a month, or spend by model, feature or day, or your own SQL.",
    ),
    (
        "enforce",
        "budget.cli.enforce:enforce",
        "Enforce per-user monthly caps: consume usage and authorizations over MQTT, publish decisions.",
    ),
    (
        "alerts",
        "budget.cli.alerts:alerts",
        "Forward soft, cap, overshoot and unknown-model alerts to a webhook as JSON.",
    ),
    (
        "admin",
        "budget.cli.admin:admin_group",
        "Set a user's cap, plan or time zone through the enforcer and show the status it then publishes.",
    ),
    (
        "status",
        "budget.cli.status:status",
        "A user's status from the enforcer (retained), or their month's spend from the store.",
    ),
    (
        "store",
        "budget.cli.store:store_group",
        "Check, back up or repair an event store.",
    ),
)
