"""The ``svlab`` command as a new user meets it: help texts, errors that name their source, and
``svlab train``'s run directory, Ctrl-C and ``--resume``."""

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from svlab import checkpoint
from svlab.cli import build_parser, main
from svlab.models import available


def subcommands(parser: argparse.ArgumentParser, prefix: tuple = ()):
    """(words, parser) for every command under ``parser``, nested ones too (``data check``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subcommands(sub, (*prefix, name))


COMMANDS = list(subcommands(build_parser()))


def test_every_command_is_walked():
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"train", "memory", "tour", "evaluate", "export", "data", "data check"} <= names


@pytest.mark.parametrize("words", [words for words, _ in COMMANDS], ids=" ".join)
def test_each_help_describes_the_command_and_lists_its_choices(words, capsys):
    parser = dict(COMMANDS)[words]
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert parser.description and len(parser.description.split()) >= 5, words
    assert " ".join(parser.description.split()[:5]) in " ".join(text.split())
    for action in parser._actions:
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            if action.metavar:  # the help text names them
                assert all(str(c) in (action.help or "") for c in action.choices) or (
                    action.metavar == "{1..8}" and list(action.choices) == list(range(1, 9))
                ), (words, action.dest)
            else:  # argparse lists them as {a,b,c}
                assert "{" + ",".join(map(str, action.choices)) + "}" in text, (words, action.dest)


@pytest.mark.parametrize("words", [words for words, _ in COMMANDS], ids=" ".join)
def test_each_help_shows_every_default(words, capsys):
    with pytest.raises(SystemExit):
        main([*words, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in dict(COMMANDS)[words]._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text or "default" in (action.help or ""), (
                words, action.dest)


def test_models_and_profiles_are_listed(capsys):
    for words in (["memory"], ["train"]):
        with pytest.raises(SystemExit):
            main([*words, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert all(name in text for name in available()) and "resnet34" in text, words
    for words in (["train"], ["tour"]):
        with pytest.raises(SystemExit):
            main([*words, "--help"])
        assert "--profile {ci,laptop,gpu}" in capsys.readouterr().out, words


def tiny_recipe(tmp_path, corpus, **extra) -> str:
    recipe = tmp_path / "recipe.toml"
    settings = dict(model='"resnet18"', data_root=f'"{corpus}"', crop_frames=20, batch_size=4,
                    epochs=3, lr=0.05, warmup_epochs=0.0, log_every=1) | extra  # fmt: skip
    recipe.write_text(
        "".join(f"{key} = {value}\n" for key, value in settings.items())
        + "[model_args]\nbase_width = 2\ndepths = [1, 1, 1, 1]\nembed_dim = 8\n"
    )
    return str(recipe)


def test_set_errors_name_the_command_line_and_file_errors_the_file(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path)
    cases = [
        (["--set", "learning_rate=0.1"],
         "--set learning_rate=0.1: unknown key 'learning_rate' (did you mean 'lr'?)"),
        (["--set", "epochs=2.5"], "--set epochs=2.5: epochs must be int, got 2.5"),
        (["--set", "bach_size=8"], "--set bach_size=8: unknown key 'bach_size' "
         "(did you mean 'batch_size'?)"),
        (["--set", "lr.x=1"], "--set lr.x=1: lr is not a table"),
        (["--set", "lr"], "--set lr: expected key=value"),
    ]  # fmt: skip
    for sets, message in cases:
        assert main(["train", "--config", recipe, *sets]) == 2
        assert capsys.readouterr().err == f"svlab train: error: {message}\n"
    (tmp_path / "recipe.toml").write_text("learning_rate = 0.1\n")
    assert main(["train", "--config", recipe, "--set", "lr=0.2"]) == 2
    assert capsys.readouterr().err == (
        f"svlab train: error: {recipe}: unknown key 'learning_rate' (did you mean 'lr'?)\n"
    )


def test_a_missing_trial_file_fails_before_any_audio_is_read(
    training_corpus, tmp_path, capsys, monkeypatch
):
    import svlab.train.loop

    def featurize(*args, **kwargs):
        raise AssertionError("the training audio was read before the trial list was checked")

    monkeypatch.setattr(svlab.train.loop.SpeakerCrops, "from_corpus", featurize)
    lines = (training_corpus / "trials" / "test.txt").read_text().splitlines()
    lines.insert(2, f"1 {lines[0].split()[1]} id10009/nosession/00001.wav")
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    recipe = tiny_recipe(tmp_path, training_corpus, eval_trials=f'"{trials}"')
    out_dir = tmp_path / "run"
    assert main(["train", "--config", recipe, "--set", f"out_dir='{out_dir}'"]) == 2
    out, err = capsys.readouterr()
    assert out == f"run directory: {out_dir}\n"
    assert err == (
        f"svlab train: error: {trials} line 3: test file id10009/nosession/00001.wav does not "
        f"exist in {training_corpus / 'wav'}\n"
    )
    assert not out_dir.exists()


def test_ctrl_c_saves_says_how_to_resume_and_resume_says_where(training_corpus, tmp_path, capsys):
    """SIGINT to a running `svlab train`: the state of the last whole step is saved, one line
    says so and how to resume, exit status 130, no traceback; the printed command resumes from
    that step, says so, and its progress bar starts there."""
    recipe = tiny_recipe(
        tmp_path, training_corpus, epochs=2000, eval_every=0, checkpoint_every=3
    )  # 8000 steps: it is still running when interrupted
    out_dir = tmp_path / "run"
    argv = ["train", "--config", recipe, "--set", f"out_dir='{out_dir}'"]
    process = subprocess.Popen(
        [sys.executable, "-m", "svlab.cli", *argv, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        # a shell's background job starts with SIGINT ignored; a terminal's program does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        while not (out_dir / "checkpoint.pt").exists() and process.poll() is None:
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert out.splitlines()[0] == f"run directory: {out_dir}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    step = checkpoint.load(out_dir / "checkpoint.pt")["step"]
    assert 3 <= step < 8000
    resume = f"svlab train --config {recipe} --set \"out_dir='{out_dir}'\" --resume"
    assert err == (
        f"interrupted at step {step} of 8000: state saved to {out_dir / 'checkpoint.pt'}; "
        f"resume with: {resume}\n"
    )
    command = shlex.split(err.split("resume with: ")[1])
    assert main([*command[1:], "--set", f"stop_after_steps={step + 2}"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[:2] == [
        f"run directory: {out_dir}",
        f"resuming {out_dir} from step {step} of 8000 (checkpoint.pt)",
    ]
    assert f"| {step}/8000 [" in err.split("\r")[1]  # the bar's first drawing
    assert checkpoint.load(out_dir / "checkpoint.pt")["step"] == step + 2


def test_ctrl_c_and_a_failed_training_print_one_line(training_corpus, monkeypatch, capsys):
    """Outside ``svlab train``'s loop too, Ctrl-C exits 130 and training that cannot go on
    exits 2, each with one line and no traceback."""
    import svlab.data
    from svlab.train.loop import TrainingError

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(svlab.data, "check_corpus", interrupted)
    assert main(["data", "check", str(training_corpus)]) == 130
    assert capsys.readouterr().err == "svlab data: interrupted\n"

    def diverged(*args, **kwargs):
        raise TrainingError("loss became nan at step 3 (epoch 1) of 'x'")

    monkeypatch.setattr(svlab.data, "check_corpus", diverged)
    assert main(["data", "check", str(training_corpus)]) == 2
    assert capsys.readouterr().err == (
        "svlab data: error: loss became nan at step 3 (epoch 1) of 'x'\n"
    )


def test_memory_projects_the_unit_wise_rebuild_and_refuses_it_for_vanilla(capsys):
    assert main(["memory", "--model", "rev_resnet18", "--batch-size", "4", "--recompute",
                 "unit"]) == 0
    assert "rev_resnet18, rebuilt by unit" in capsys.readouterr().out
    assert main(["memory", "--model", "rev_resnet18", "--batch-size", "4", "--autocast",
                 "bfloat16"]) == 0
    assert "rev_resnet18, bfloat16 autocast" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="for reversible models"):
        main(["memory", "--model", "resnet18", "--recompute", "unit"])
