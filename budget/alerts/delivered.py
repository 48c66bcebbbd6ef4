"""The alerts already posted, kept on disk so a restart does not post one again.

The broker redelivers every alert the forwarder had not acknowledged when it stopped; the one it was
posting when it crashed may have reached the webhook already. The forwarder writes an alert's key here
after the webhook accepted it and before acknowledging it, and skips a redelivered alert whose key is
here. Only alerts posted and not yet acknowledged matter, at most the broker's in-flight window, so the
record keeps the newest `limit` keys and forgets older ones: its file stays small (about 33 bytes a key).

The file is `DIR/delivered`: a header line, then one key digest (128 bits of SHA-256, hex) a line, oldest
first. Every change writes a new file, fsyncs it and renames it over the old one, so a crash leaves the
old record or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from budget.errors import AlertStateError

HEADER = "margins alerts delivered v1"
DEFAULT_LIMIT = 10_000
_DIGEST_CHARS = 32


def key_digest(key: str) -> str:
    """What the record keeps of a key: fixed size whatever the user ids."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]


class DeliveredRecord:
    """The keys of the newest `limit` alerts the webhook accepted, in `directory/delivered`."""

    def __init__(self, directory: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.path = directory / "delivered"
        self.limit = limit
        self._digests: dict[str, None] = {}  # an ordered set: oldest first

    @classmethod
    def open(cls, directory: Path, limit: int = DEFAULT_LIMIT) -> DeliveredRecord:
        """The record in `directory` (created with the directory if missing); raises AlertStateError when
        it cannot be read or is not such a record."""
        record = cls(directory, limit)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if record.path.exists():
                record._load(record.path.read_text(encoding="ascii"))
            else:
                record._save()  # fails now, at start, if the directory cannot be written
        except (OSError, UnicodeDecodeError) as error:
            raise AlertStateError(str(record.path), f"cannot be read or written: {error}") from error
        return record

    def __contains__(self, key: str) -> bool:
        return key_digest(key) in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def add(self, key: str) -> None:
        """Record `key` durably (forgetting the oldest beyond `limit`); raises AlertStateError."""
        digest = key_digest(key)
        self._digests.pop(digest, None)
        self._digests[digest] = None
        while len(self._digests) > self.limit:
            del self._digests[next(iter(self._digests))]
        try:
            self._save()
        except OSError as error:
            raise AlertStateError(str(self.path), f"cannot be written: {error}") from error

    def _load(self, text: str) -> None:
        lines = text.splitlines()
        if not lines or lines[0] != HEADER:
            raise AlertStateError(str(self.path), f"not a record of delivered alerts (no {HEADER!r} line)")
        for number, line in enumerate(lines[1:], start=2):
            if len(line) != _DIGEST_CHARS or line.strip("0123456789abcdef"):
                raise AlertStateError(str(self.path), f"line {number}: {line[:40]!r} is not a key digest")
            self._digests[line] = None
        while len(self._digests) > self.limit:
            del self._digests[next(iter(self._digests))]

    def _save(self) -> None:
        text = "\n".join([HEADER, *self._digests]) + "\n"
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", encoding="ascii") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power loss
        finally:
            os.close(directory)
