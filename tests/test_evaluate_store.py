"""Tests for the embedding store and StoredEvalSet: the in-memory scores, reuse, refusals."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import svlab.evaluate
import svlab.stored_eval
from svlab.checkpoint import load_model
from svlab.cli import main
from svlab.data.voxceleb import CorpusError, read_trials
from svlab.embedding_store import EMBEDDINGS, INDEX, EmbeddingStore, StoreError
from svlab.evaluate import EvalSet
from svlab.models import build
from svlab.stored_eval import StoredEvalSet, store_scores

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
CI = REPO / "data" / "corpus-ci"
CHECKPOINT = REPO / "checkpoints" / "tutorial_resnet.pt"


@pytest.fixture(scope="module")
def trial_list(tmp_path_factory):
    """The first 400 trials of the ci corpus's test list."""
    path = tmp_path_factory.mktemp("trials") / "short.txt"
    path.write_text("".join((CI / "trials" / "test.txt").read_text().splitlines(True)[:400]))
    return path


@pytest.fixture(scope="module")
def tiny_list(trial_list):
    """The first 100 of those trials."""
    path = trial_list.with_name("tiny.txt")
    path.write_text("".join(trial_list.read_text().splitlines(True)[:100]))
    return path


@pytest.fixture(scope="module")
def model():
    return load_model(CHECKPOINT)


@pytest.fixture(scope="module")
def cohort(model):
    return torch.randn(40, model.embed_dim, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def stored(trial_list, model, tmp_path_factory):
    """The short list through a store in a folder, extracted by two workers."""
    evalset = EvalSet.from_corpus(CI, trial_list, store=tmp_path_factory.mktemp("s") / "store",
                                  workers=2)  # fmt: skip
    evalset.extract(model, evalset.folder)
    return evalset


@pytest.mark.parametrize("backend", ["cosine", "mean", "asnorm"])
def test_store_gives_the_in_memory_scores_on_a_ci_list(trial_list, model, cohort, stored, backend):
    in_memory = EvalSet.from_corpus(CI, trial_list)
    assert isinstance(in_memory, EvalSet) and isinstance(stored, StoredEvalSet)
    expected = in_memory.score(model, backend, cohort, top_n=10)
    result = stored.score(model, backend, cohort, top_n=10)
    # to the last bits: AS-norm's cohort statistics come from matrix products of other shapes
    # (trials in chunks), whose BLAS kernels round differently (seen: 8 of 400 at 2e-15)
    np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(result["labels"], expected["labels"])
    assert result["eer"] == pytest.approx(expected["eer"], abs=1e-12)
    assert result["min_dcf"] == pytest.approx(expected["min_dcf"], abs=1e-12)


def test_a_store_is_reused_without_reading_audio(stored, model, tmp_path):
    store = EmbeddingStore.open(stored.folder)
    moved = StoredEvalSet(stored.pairs, stored.labels, tmp_path / "no-audio", stored.folder)
    np.testing.assert_array_equal(moved.score(model)["scores"], stored.score_store(store)["scores"])


def test_store_round_trip(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    key_rows = {"s1/a/1.wav": 2, "s1/a/2.wav": 0, "s2/b/1.wav": 1, "copy.wav": 2}
    files = ["/x/2.wav", "/x/3.wav", "/x/1.wav"]
    EmbeddingStore.write(tmp_path / "s", array, key_rows, files, {"state": "abc"})
    store = EmbeddingStore.open(tmp_path / "s", {"state": "abc"})
    assert isinstance(store.embeddings, np.memmap)
    np.testing.assert_array_equal(store.embeddings, array)
    assert store.key_rows == key_rows and store.files == files
    assert store.rows(["copy.wav", "s1/a/2.wav"]).tolist() == [2, 0]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [EMBEDDINGS, INDEX]


def test_a_store_made_by_another_model_or_crop_is_refused(stored, model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(StoreError, match=r"another model .*differs in state"):
        stored.extract(other, stored.folder)
    cropped = StoredEvalSet(stored.pairs, stored.labels, stored.audio_dir, stored.folder,
                            max_seconds=2.0)  # fmt: skip
    with pytest.raises(StoreError, match="differs in max_seconds"):
        cropped.score(model)


def test_a_store_lacking_utterances_of_the_list_is_refused(stored, model):
    extra = (stored.pairs[0][0], "id00099/zzz/00001.wav")
    longer = StoredEvalSet([*stored.pairs, extra], np.append(stored.labels, 0), stored.audio_dir,
                           stored.folder)  # fmt: skip
    with pytest.raises(StoreError, match="holds no embedding for 1 utterances"):
        longer.score(model)


def test_keys_naming_one_file_share_its_row_and_extraction(model, tmp_path):
    files = sorted({t.enroll for t in read_trials(CI / "trials" / "test.txt")})[:6]
    pairs, labels = [], []
    for copy_index in range(3):
        for name in files:
            link = tmp_path / "wav" / f"{name.split('/')[0]}c{copy_index}" / name.split("/", 1)[1]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(CI / "wav" / name)
    for name in files:
        speaker, rest = name.split("/", 1)
        pairs.append((f"{speaker}c0/{rest}", f"{speaker}c2/{rest}"))
        labels.append(0)
    evalset = StoredEvalSet(pairs, np.array(labels), tmp_path / "wav", tmp_path / "store")
    store = evalset.extract(model, evalset.folder)
    assert store.embeddings.shape[0] == len(files) and len(store.key_rows) == 2 * len(files)
    enroll, test = store.rows([a for a, _ in pairs]), store.rows([b for _, b in pairs])
    np.testing.assert_array_equal(enroll, test)
    scores = store_scores(store, enroll, test)
    np.testing.assert_allclose(scores, 1.0, atol=1e-12)


@pytest.mark.parametrize("backend", ["cosine", "asnorm"])
def test_chunked_scoring_equals_unchunked(stored, cohort, monkeypatch, backend):
    store = EmbeddingStore.open(stored.folder)
    enroll = store.rows([a for a, _ in stored.pairs])
    test = store.rows([b for _, b in stored.pairs])
    whole = store_scores(store, enroll, test, backend, cohort, 10, chunk=10**6)
    monkeypatch.setattr(svlab.stored_eval, "CHUNK_KEYS", len(store.embeddings) + 1)
    single = store_scores(store, enroll, test, backend, cohort, 10, chunk=10**6)
    monkeypatch.setattr(svlab.stored_eval, "CHUNK_KEYS", 7)
    chunked = store_scores(store, enroll, test, backend, cohort, 10, chunk=13)
    np.testing.assert_array_equal(whole, single)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12)
    if backend == "cosine":
        np.testing.assert_array_equal(chunked, whole)


def test_a_trial_naming_a_missing_file_is_named_before_any_extraction(trial_list, tmp_path):
    lines = trial_list.read_text().splitlines(True)
    bad = tmp_path / "bad.txt"
    enroll = lines[0].split()[1]
    bad.write_text("".join(lines[:5]) + f"0 {enroll} id00099/zzz/00009.wav\n")
    with pytest.raises(CorpusError, match=r"bad.txt line 6: test file id00099/zzz/00009.wav"):
        EvalSet.from_corpus(CI, bad, store=tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_a_truncated_or_corrupt_store_is_named(stored, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    data = (stored.folder / EMBEDDINGS).read_bytes()
    index = (stored.folder / INDEX).read_text()
    (folder / INDEX).write_text(index)
    (folder / EMBEDDINGS).write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"embeddings.npy is missing, truncated or corrupt"):
        EmbeddingStore.open(folder)
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    (folder / EMBEDDINGS).write_bytes(bytes(flipped))
    with pytest.raises(StoreError, match="truncated or corrupt"):
        EmbeddingStore.open(folder)
    (folder / EMBEDDINGS).write_bytes(data)
    (folder / INDEX).write_text(index[: len(index) // 2])
    with pytest.raises(StoreError, match=r"index.json is corrupt: JSONDecodeError"):
        EmbeddingStore.open(folder)
    broken = json.loads(index)
    broken["rows"] = broken["rows"][:-1]
    (folder / INDEX).write_text(json.dumps(broken))
    with pytest.raises(StoreError, match="keys, rows and files do not match"):
        EmbeddingStore.open(folder)


def test_a_long_list_takes_the_store_path_without_a_folder(tiny_list, model, monkeypatch):
    monkeypatch.setattr(svlab.evaluate, "LARGE_LIST_KEYS", 50)
    monkeypatch.setattr(svlab.evaluate, "_CACHE", {})
    evalset = EvalSet.from_corpus(CI, tiny_list, batch_size=16)
    assert isinstance(evalset, StoredEvalSet) and evalset.folder is None
    monkeypatch.setattr(svlab.evaluate, "LARGE_LIST_KEYS", 10**6)
    expected = EvalSet.from_corpus(CI, tiny_list, batch_size=16).score(model)["scores"]
    np.testing.assert_array_equal(evalset.score(model)["scores"], expected)


def test_svlab_evaluate_with_a_store_reports_the_in_memory_eer(tiny_list, tmp_path, capsys):
    common = [
        "evaluate", str(CHECKPOINT), "--root", str(CI), "--trials", str(tiny_list),
        "--resamples", "20",
    ]  # fmt: skip
    assert main(common) == 0
    in_memory = json.loads(capsys.readouterr().out)
    assert main([*common, "--store", str(tmp_path / "store"), "--workers", "1"]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert (in_memory["store"], stored["store"]) == (None, str(tmp_path / "store"))
    for field in ("eer_percent", "eer_interval_percent", "min_dcf", "trials"):
        assert stored[field] == in_memory[field]
    assert (tmp_path / "store" / INDEX).is_file()
    assert main([*common, "--store", str(tmp_path / "store"), "--workers", "-1"]) == 2
    assert main([*common, "--batch-size", "0"]) == 2


def test_a_model_with_another_front_end_gets_the_in_memory_scores(tiny_list, tmp_path):
    torch.manual_seed(0)
    ecapa = build("ecapa_c1024_speechbrain", channels=8, scale=4, mfa_channels=16, embed_dim=8)
    expected = EvalSet.from_corpus(CI, tiny_list).score(ecapa)
    stored = StoredEvalSet.from_corpus(CI, tiny_list, tmp_path / "store").score(ecapa)
    np.testing.assert_array_equal(stored["scores"], expected["scores"])
    assert EmbeddingStore.open(tmp_path / "store").identity["front_end"] == "speechbrain"
