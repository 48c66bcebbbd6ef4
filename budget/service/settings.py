"""Loading the enforcer's caps config from its TOML file (budget/domain/config.py parses the table)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from budget.domain.config import EnforcerConfig, parse_config
from budget.domain.prices import PriceCatalog
from budget.errors import ConfigError


def load_config(path: str | Path, base_catalog: PriceCatalog | None = None) -> EnforcerConfig:
    """Read and validate a config file; raises ConfigError naming the file, field and expectation."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(where, "(file)", f"cannot read: {error}") from error
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(where, "(file)", f"not valid TOML: {error}") from error
    return parse_config(data, where, base_catalog)
