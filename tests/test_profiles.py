"""Profiles: the corpus is generated when absent and made again when stale."""

import json

import pytest

from svlab.profiles import Profile, get_profile

TINY = {
    "n_train_speakers": 2, "n_test_speakers": 2, "sessions_per_speaker": 2,
    "utterances_per_session": 1, "train_seconds": (0.5, 0.5), "test_seconds": (0.5, 0.5),
}  # fmt: skip


def test_ensure_corpus_generates_then_regenerates_when_stale(tmp_path):
    profile = Profile("tiny", tmp_path / "corpus", synth=TINY)
    assert not profile.corpus_is_current()
    root = profile.ensure_corpus()
    assert profile.corpus_is_current() and (root / "trials" / "test.txt").is_file()
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["settings"]["difficulty"] = 0.5
    meta_path.write_text(json.dumps(meta))
    assert not profile.corpus_is_current()
    profile.ensure_corpus()
    assert json.loads(meta_path.read_text())["settings"]["difficulty"] == 1.0


def test_real_corpus_profile_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SVLAB_DATA", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="SVLAB_DATA"):
        get_profile("gpu").ensure_corpus()


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match="ci"):
        get_profile("cluster")


def test_ci_corpus_is_the_bytes_its_committed_digest_names():
    """The notebooks' checked outputs rest on the ci corpus being the same bytes everywhere."""
    from svlab.data.corpora import corpus_digest
    from svlab.profiles import REPO_ROOT

    stated = (REPO_ROOT / "data" / "corpus-ci.sha256").read_text().split()[0]
    assert corpus_digest(get_profile("ci").ensure_corpus()) == stated, (
        "the ci corpus differs from data/corpus-ci.sha256: if the generator changed on purpose, "
        "write the new digest there (svlab.data.corpora.corpus_digest) and re-execute the notebooks"
    )
