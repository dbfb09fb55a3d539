"""Tests for svlab.evaluate: trial parsing, featurization once, embeddings and cosine scores."""

import numpy as np
import pytest
import torch

from svlab.data.synth import synthesize_corpus
from svlab.data.voxceleb import read_trials
from svlab.evaluate import EvalSet
from svlab.features import fbank
from svlab.models import build

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(
        tmp_path_factory.mktemp("corpus") / "c",
        n_train_speakers=2,
        n_test_speakers=3,
        sessions_per_speaker=2,
        utterances_per_session=2,
        train_seconds=(0.4, 0.4),
        test_seconds=(0.4, 0.9),
        trials_per_utterance=4,
    )


def test_missing_trial_list_is_named(corpus):
    with pytest.raises(ValueError, match="nope.txt"):
        EvalSet.from_corpus(corpus, trials="nope.txt")


def test_features_cover_every_trial_utterance_and_are_cached(corpus):
    evalset = EvalSet.from_corpus(corpus, batch_size=4)
    trials = read_trials(corpus / "trials" / "test.txt")
    assert set(evalset.keys) == {p for t in trials for p in (t.enroll, t.test)}
    assert sum(b.shape[0] for b in evalset.batches) == len(evalset.keys)
    assert evalset.labels.tolist() == [t.label for t in trials]
    assert EvalSet.from_corpus(corpus, batch_size=4) is evalset
    assert EvalSet.from_corpus(corpus, batch_size=3) is not evalset


def test_features_are_fbank_of_the_audio_cut_to_the_batch(corpus):
    from svlab.data.audio import load_audio

    evalset = EvalSet.from_corpus(corpus, batch_size=4)
    first = evalset.batches[0]
    key = evalset.keys[1]
    full = fbank(load_audio(corpus / "wav" / key), cmn=False)[0]
    frames = first.shape[1]
    assert full.shape[0] >= frames
    assert torch.allclose(first[1], (full - full.mean(0))[:frames], atol=1e-4)
    assert torch.allclose(evalset.means[1], full.mean(0), atol=1e-4)


def test_score_equals_independent_cosine_scoring(corpus):
    evalset = EvalSet.from_corpus(corpus, batch_size=4)
    torch.manual_seed(0)
    model = build("resnet18", base_width=2, depths=(1, 1, 1, 1), embed_dim=8)
    model.train()
    result = evalset.score(model)
    assert model.training  # restored
    model.eval()
    emb = {}
    with torch.no_grad():
        for batch, start in zip(
            evalset.batches, np.cumsum([0] + [len(b) for b in evalset.batches]), strict=False
        ):
            for i, feats in enumerate(batch):
                emb[evalset.keys[start + i]] = model(feats[None])[0].numpy()
    expected = [
        float(np.dot(emb[a], emb[b]) / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]))
        for a, b in evalset.pairs
    ]
    np.testing.assert_allclose(result["scores"], expected, atol=1e-5)
    assert 0 <= result["eer"] <= 1 and 0 <= result["min_dcf"] <= 1.0 + 1e-9
    # EER from the scores, counted directly at every threshold
    scores, labels = np.array(expected), evalset.labels
    best = min(
        max(np.mean(scores[labels == 1] < t), np.mean(scores[labels == 0] >= t))
        for t in np.append(scores, np.inf)
    )
    assert result["eer"] <= best + 1e-9


def test_mean_fbank_baseline_scores_every_trial(corpus):
    evalset = EvalSet.from_corpus(corpus, batch_size=4)
    result = evalset.score_mean_fbank()
    assert result["scores"].shape == (len(evalset.pairs),)
    assert np.isfinite(result["scores"]).all()


def test_max_seconds_shortens_utterances(corpus):
    short = EvalSet.from_corpus(corpus, batch_size=4, max_seconds=0.3)
    assert max(b.shape[1] for b in short.batches) <= 1 + (4800 - 400) // 160
