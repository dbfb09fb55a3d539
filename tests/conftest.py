"""Fixtures shared by several test files."""

import pytest

from svlab.data.synth import synthesize_corpus


@pytest.fixture(scope="session")
def training_corpus(tmp_path_factory):
    """A tiny synthetic corpus (4 train, 2 test speakers) that trains in seconds; read only."""
    return synthesize_corpus(
        tmp_path_factory.mktemp("corpus") / "c",
        n_train_speakers=4,
        n_test_speakers=2,
        sessions_per_speaker=2,
        utterances_per_session=2,
        train_seconds=(0.4, 0.6),
        test_seconds=(0.4, 0.6),
        trials_per_utterance=2,
    )


@pytest.fixture(scope="session")
def augment_sets(tmp_path_factory):
    """Small offline MUSAN and RIRS_NOISES stand-ins, ``(musan, rirs)``; read only."""
    from svlab.data.noise_sets import write_noise_set, write_rir_set

    root = tmp_path_factory.mktemp("augment")
    musan = write_noise_set(root / "musan", files=4, seconds=(0.5, 1.5))
    return musan, write_rir_set(root / "rirs", rooms=1, rirs_per_room=2)
