"""Speech data: audio files, the offline synthetic corpus, VoxCeleb lists, and training crops."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from svlab.data.audio import AudioError, load_audio
from svlab.data.corpora import Profile, get_profile
from svlab.data.dataset import SpeakerCrops, crop_samples, fit_length, load_utterances
from svlab.data.synth import synthesize_corpus
from svlab.data.voxceleb import (
    CorpusError,
    Trial,
    Utterance,
    read_train_list,
    read_trials,
    scan,
    split_speakers,
    wav_dir,
    write_train_list,
)

__all__ = [
    "AudioError",
    "CorpusError",
    "Profile",
    "SpeakerCrops",
    "Trial",
    "Utterance",
    "check_corpus",
    "crop_samples",
    "fit_length",
    "get_profile",
    "load_audio",
    "load_utterances",
    "read_train_list",
    "read_trials",
    "register_cli",
    "scan",
    "split_speakers",
    "synthesize_corpus",
    "wav_dir",
    "write_train_list",
]


def check_corpus(root: str | Path, read_audio: bool = True) -> dict:
    """Check that every file of ``root/train.txt`` and ``root/trials/*.txt`` exists (and reads).

    Returns the counts; raises :class:`CorpusError` or :class:`AudioError` naming the first
    bad file (and line).

    >>> import tempfile, pathlib
    >>> root = synthesize_corpus(pathlib.Path(tempfile.mkdtemp()) / "c", n_train_speakers=2,
    ...     n_test_speakers=2, sessions_per_speaker=2, utterances_per_session=1,
    ...     train_seconds=(0.5, 0.5), test_seconds=(0.5, 0.5))
    >>> check_corpus(root)["train_speakers"]
    2
    """
    root = Path(root)
    audio = wav_dir(root)
    trial_lists = sorted((root / "trials").glob("*.txt"))
    if not (root / "train.txt").is_file() and not trial_lists:
        raise CorpusError(f"{root} has neither a train.txt nor trials/*.txt")
    counts: dict = {"root": str(root)}
    paths: set[str] = set()
    if (root / "train.txt").is_file():
        train = read_train_list(root / "train.txt", wav_root=root)
        paths.update(u.path for u in train)
        counts["train_speakers"] = len({u.speaker for u in train})
        counts["train_utterances"] = len(train)
    for trial_list in trial_lists:
        trials = read_trials(trial_list, wav_root=root)
        tested = {t.enroll for t in trials} | {t.test for t in trials}
        paths.update(tested)
        counts[f"trials/{trial_list.name}"] = {
            "trials": len(trials),
            "target": sum(t.label for t in trials),
            "utterances": len(tested),
            "speakers": len({p.split("/")[0] for p in tested}),
        }
    if read_audio:
        for path in sorted(paths):
            load_audio(audio / path)
    return counts


def _synth(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile)
    settings = dict(profile.synth or {})
    if args.difficulty is not None:
        settings["difficulty"] = args.difficulty
    root = Path(args.root) if args.root else profile.data_root
    as_profile = root == profile.data_root and args.seed is None and args.difficulty is None
    stale = as_profile and (root / "trials").is_dir() and not profile.corpus_is_current()
    if (root / "trials").is_dir() and not (args.force or stale):
        print(f"{root} already holds a corpus (use --force to make it again)")
        return 0
    if stale:
        print(f"{root} was made with other settings or an older generator: making it again")
    seed = profile.seed if args.seed is None else args.seed
    synthesize_corpus(
        root, seed=seed, workers=args.workers, overwrite=args.force or stale, **settings
    )
    print(json.dumps(json.loads((root / "meta.json").read_text())["counts"]))
    return 0


def _check(args: argparse.Namespace) -> int:
    print(json.dumps(check_corpus(args.root, read_audio=not args.no_audio), indent=1))
    return 0


def _list(args: argparse.Namespace) -> int:
    path = write_train_list(args.root, args.output)
    print(f"wrote {sum(1 for _ in path.open())} utterances to {path}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svlab data synth|check|list``.

    >>> parser = argparse.ArgumentParser(); register_cli(parser.add_subparsers())
    >>> parser.parse_args(["data", "check", "/x"]).root
    '/x'
    """
    data = subparsers.add_parser("data", help="make, check and list speech corpora")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = commands.add_parser(
        "synth",
        help="generate the offline synthetic corpus of a profile",
        description="Generate the synthetic VoxCeleb-layout corpus (see data/README.md).",
    )
    synth.add_argument("--root", help="where to write it (default: the profile's data root)")
    synth.add_argument("--profile", default=None, help="ci (default), laptop")
    synth.add_argument("--seed", type=int, default=None, help="default: the profile's seed")
    synth.add_argument(
        "--difficulty",
        type=float,
        default=None,
        help="scale of channel and within-speaker variability (default 1.0)",
    )
    synth.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    synth.add_argument("--force", action="store_true", help="replace an existing corpus")
    synth.set_defaults(func=_synth)

    check = commands.add_parser(
        "check",
        help="check a corpus: every listed file exists and reads",
        description="Check ROOT/train.txt and ROOT/trials/*.txt; print speaker, utterance "
        "and trial counts.",
    )
    check.add_argument("root", help="corpus root (holding wav/, train.txt, trials/)")
    check.add_argument("--no-audio", action="store_true", help="check existence only")
    check.set_defaults(func=_check)

    listing = commands.add_parser(
        "list",
        help="write train.txt for a VoxCeleb2-dev style tree",
        description="Scan ROOT/wav/<speaker>/<session>/*.wav and write '<speaker> <path>' lines.",
    )
    listing.add_argument("root", help="corpus root (holding wav/)")
    listing.add_argument("--output", default=None, help="default: ROOT/train.txt")
    listing.set_defaults(func=_list)
