"""Reading a user's text file (scenario, trace, rules, eval set, query set) with one wording for failure.

Each reader turns `UnreadableFile` (sim/errors.py) into its own error type, so every message still names
the file and where in it; what went wrong reading it is said the same way everywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sim.errors import UnreadableFile


def file_sha256(path: str | Path) -> str:
    """The file's sha256 (hex): run histories and provenance tell an edited input from the same one."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole file as text, or UnreadableFile("no such file" / "cannot be read: ...")."""
    try:
        return Path(path).read_text(encoding=encoding)
    except FileNotFoundError:
        raise UnreadableFile("no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UnreadableFile(f"cannot be read: {error}") from None
