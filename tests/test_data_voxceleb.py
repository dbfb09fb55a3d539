"""VoxCeleb layout, train and trial lists, the CLI: good input and clear errors for bad."""

import re
import shutil

import numpy as np
import pytest
import soundfile

from svlab.cli import main
from svlab.data import (
    CorpusError,
    check_corpus,
    read_train_list,
    read_trials,
    scan,
    split_speakers,
    synthesize_corpus,
    write_train_list,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(
        tmp_path_factory.mktemp("vox") / "corpus",
        n_train_speakers=2,
        n_test_speakers=2,
        sessions_per_speaker=2,
        utterances_per_session=1,
        train_seconds=(0.5, 0.5),
        test_seconds=(0.5, 0.5),
        trials_per_utterance=2,
    )


def test_scan_finds_every_file(corpus):
    utterances = scan(corpus)
    assert len(utterances) == 8
    assert all(u.path == f"{u.speaker}/{u.session}/00001.wav" for u in utterances)
    assert scan(corpus / "wav") == utterances


def test_write_train_list_round_trips(corpus, tmp_path):
    path = write_train_list(corpus, tmp_path / "list.txt")
    listed = read_train_list(path, wav_root=corpus)
    assert listed == scan(corpus)


def test_nonexistent_root(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        scan(tmp_path / "missing")
    with pytest.raises(CorpusError, match="no <speaker>/<session>/<utt>.wav"):
        scan(tmp_path)


def test_malformed_trial_line_names_line(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a/x/1.wav a/y/2.wav\n\n0 a/x/1.wav\n")
    with pytest.raises(CorpusError, match=r"trials.txt line 3: expected .* got 2 fields"):
        read_trials(path)


def test_bad_label_names_line(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a/x/1.wav a/y/2.wav\n2 a/x/1.wav b/z/1.wav\n")
    with pytest.raises(CorpusError, match=r"trials.txt line 2: label must be 1 or 0, got '2'"):
        read_trials(path)


def test_trial_naming_missing_file(corpus, tmp_path):
    good = (corpus / "trials" / "test.txt").read_text()
    path = tmp_path / "trials.txt"
    path.write_text(good + "0 id10001/nosuchsessi/00001.wav id10002/x/00001.wav\n")
    line = good.count("\n") + 1
    with pytest.raises(
        CorpusError, match=rf"trials.txt line {line}: enrol file id10001/nosuchsessi/00001.wav "
        f"does not exist in {corpus / 'wav'}$"
    ):
        read_trials(path, wav_root=corpus)
    missing = {}
    path.write_text(good + "0 id1/a/1.wav id2/b/1.wav\n1 id3/c/1.wav id1/a/1.wav\n")
    assert len(read_trials(path, wav_root=corpus, missing=missing)) == line + 1
    assert missing == {
        "id1/a/1.wav": f"{path} line {line}: enrol file id1/a/1.wav does not exist in {corpus}/wav",
        "id2/b/1.wav": f"{path} line {line}: test file id2/b/1.wav does not exist in {corpus}/wav",
        "id3/c/1.wav": f"{path} line {line + 1}: enrol file id3/c/1.wav does not exist in "
        f"{corpus}/wav",
    }


def test_missing_and_empty_lists(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_trials(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(CorpusError, match="is empty"):
        read_trials(tmp_path / "empty.txt")


def test_malformed_train_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("id00001 id00002/abc/00001.wav\n")
    with pytest.raises(CorpusError, match="train.txt line 1: expected"):
        read_train_list(path)


def test_split_is_deterministic_and_stable():
    speakers = [f"id{i:05d}" for i in range(200)]
    train, test = split_speakers(speakers, 0.25, seed=1)
    assert split_speakers(list(reversed(speakers)), 0.25, seed=1) == (train, test)
    assert 30 < len(test) < 70 and not set(train) & set(test)
    # a speaker's side does not depend on the other speakers
    assert split_speakers(test + train[:5], 0.25, seed=1)[1] == test
    assert split_speakers(speakers, 0.25, seed=2)[1] != test


def test_cli_check_and_list(corpus, capsys, tmp_path):
    assert main(["data", "check", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert '"train_utterances": 4' in out and "all 8 listed files exist and read" in out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_check_reports_every_bad_file_in_one_run(corpus, tmp_path, capsys):
    """Five bad files of five kinds and one at 8 kHz: one line each, a count, exit status 1."""
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    wavs = sorted((broken / "wav").glob("*/*/*.wav"))
    names = [w.relative_to(broken / "wav").as_posix() for w in wavs]
    wavs[0].write_bytes(b"")
    soundfile.write(wavs[1], np.zeros(0, dtype=np.int16), 16000)
    wavs[2].write_bytes(b"RIFF not audio")
    soundfile.write(wavs[3], np.zeros(800, dtype=np.int16), 16000)
    wavs[4].unlink()
    soundfile.write(wavs[5], np.sin(np.arange(4000) / 3), 8000)
    assert main(["data", "check", str(broken)]) == 1
    out, err = capsys.readouterr()
    assert '"files": 8' in out and "1 file at 8000 Hz will be resampled to 16000 Hz" in out
    lines = err.splitlines()
    assert lines[-1] == "5 of 8 files are bad" and len(lines) == 6, lines
    assert f"{wavs[0]} is empty (0 bytes)" in lines[0]
    assert f"{wavs[1]} is empty (0 samples)" in lines[1]
    assert f"{wavs[2]} is unreadable" in lines[2]
    assert f"{wavs[3]} is all silent" in lines[3]
    assert re.fullmatch(
        rf"{broken}/(train|trials/\w+)\.txt line \d+: (audio|enrol|test) file {names[4]} does not "
        rf"exist in {broken}/wav", lines[4]
    ), lines[4]
    counts = check_corpus(broken, read_audio=False)
    assert len(counts["problems"]) == 1 and counts["sample_rates"] == {}
    assert main(["data", "check", str(broken), "--no-audio"]) == 1


def test_cli_help(capsys):
    for command in (["data"], ["data", "synth"], ["data", "check"], ["data", "list"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
    assert "VoxCeleb2" in capsys.readouterr().out


def test_cli_synth_leaves_existing_corpus(corpus, capsys):
    before = (corpus / "train.txt").read_text()
    assert main(["data", "synth", "--root", str(corpus)]) == 0
    assert "already holds a corpus" in capsys.readouterr().out
    assert (corpus / "train.txt").read_text() == before
