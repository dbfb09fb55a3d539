"""Speech data: audio files, the offline synthetic corpus, VoxCeleb lists, and training crops."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from svlab.data import audio as audio_io
from svlab.data.audio import AudioError, ResampleWarning, load_audio, read_audio
from svlab.data.corpora import Profile, get_profile
from svlab.data.dataset import (
    SAMPLE_RATE,
    SpeakerCrops,
    crop_samples,
    fit_length,
    load_utterances,
)
from svlab.data.noise_sets import write_noise_set, write_rir_set
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
    "ResampleWarning",
    "SpeakerCrops",
    "Trial",
    "Utterance",
    "check_corpus",
    "crop_samples",
    "fit_length",
    "get_profile",
    "load_audio",
    "load_utterances",
    "read_audio",
    "read_train_list",
    "read_trials",
    "register_cli",
    "scan",
    "split_speakers",
    "synthesize_corpus",
    "wav_dir",
    "write_noise_set",
    "write_rir_set",
    "write_train_list",
]


def check_corpus(root: str | Path, read_audio: bool = True) -> dict:
    """Check every file of ``root/train.txt`` and ``root/trials/*.txt``: it exists (and reads).

    Returns the counts and every problem found in one pass: ``problems`` holds one message per
    bad file (a listed file that does not exist, naming the list and the first line naming it;
    audio that does not read, saying why), ``files`` the number of distinct files listed and
    ``sample_rates`` how many of them are at each rate. A malformed list raises
    :class:`CorpusError` naming its line.

    >>> import tempfile, pathlib
    >>> root = synthesize_corpus(pathlib.Path(tempfile.mkdtemp()) / "c", n_train_speakers=2,
    ...     n_test_speakers=2, sessions_per_speaker=2, utterances_per_session=1,
    ...     train_seconds=(0.5, 0.5), test_seconds=(0.5, 0.5))
    >>> counts = check_corpus(root)
    >>> counts["train_speakers"], counts["files"], counts["sample_rates"], counts["problems"]
    (2, 8, {'16000': 8}, [])
    """
    root = Path(root)
    wavs = wav_dir(root)
    trial_lists = sorted((root / "trials").glob("*.txt"))
    if not (root / "train.txt").is_file() and not trial_lists:
        raise CorpusError(f"{root} has neither a train.txt nor trials/*.txt")
    counts: dict = {"root": str(root)}
    paths: set[str] = set()
    missing: dict[str, str] = {}
    if (root / "train.txt").is_file():
        train = read_train_list(root / "train.txt", wav_root=root, missing=missing)
        paths.update(u.path for u in train)
        counts["train_speakers"] = len({u.speaker for u in train})
        counts["train_utterances"] = len(train)
    for trial_list in trial_lists:
        trials = read_trials(trial_list, wav_root=root, missing=missing)
        tested = {t.enroll for t in trials} | {t.test for t in trials}
        paths.update(tested)
        counts[f"trials/{trial_list.name}"] = {
            "trials": len(trials),
            "target": sum(t.label for t in trials),
            "utterances": len(tested),
            "speakers": len({p.split("/")[0] for p in tested}),
        }
    problems = dict(missing)
    rates: Counter = Counter()
    if read_audio:
        for path in sorted(paths - missing.keys()):
            try:
                rates[audio_io.read_audio(wavs / path)[1]] += 1
            except AudioError as err:
                problems[path] = str(err)
    counts["files"] = len(paths)
    counts["sample_rates"] = {str(rate): n for rate, n in sorted(rates.items(), reverse=True)}
    counts["problems"] = [problems[path] for path in sorted(problems)]
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
    started = time.perf_counter()
    synthesize_corpus(
        root, seed=seed, workers=args.workers, overwrite=args.force or stale, progress=True,
        **settings,
    )
    print(json.dumps(json.loads((root / "meta.json").read_text())["counts"]))
    print(f"made {root} in {time.perf_counter() - started:.0f} s")
    return 0


def _check(args: argparse.Namespace) -> int:
    counts = check_corpus(args.root, read_audio=not args.no_audio)
    problems = counts.pop("problems")
    print(json.dumps(counts, indent=1))
    for rate, n in counts["sample_rates"].items():
        if int(rate) != SAMPLE_RATE:
            print(f"{n} file{'s' * (n != 1)} at {rate} Hz will be resampled to {SAMPLE_RATE} Hz")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} of {counts['files']} files are bad", file=sys.stderr)
        return 1
    print(f"all {counts['files']} listed files exist" + ("" if args.no_audio else " and read"))
    return 0


def _augment_sets(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile)
    started = time.perf_counter()
    musan = write_noise_set(args.musan or profile.musan_root, seed=profile.seed,
                            overwrite=args.force)  # fmt: skip
    rirs = write_rir_set(args.rirs or profile.rirs_root, seed=profile.seed, overwrite=args.force)
    for root in (musan, rirs):
        print(f"{root}: {sum(1 for _ in root.rglob('*.wav'))} wav files")
    print(f"in {time.perf_counter() - started:.0f} s")
    return 0


def _list(args: argparse.Namespace) -> int:
    path = write_train_list(args.root, args.output)
    print(f"wrote {sum(1 for _ in path.open())} utterances to {path}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svlab data synth|augment-sets|check|list``.

    >>> parser = argparse.ArgumentParser(); register_cli(parser.add_subparsers())
    >>> parser.parse_args(["data", "check", "/x"]).root
    '/x'
    """
    data = subparsers.add_parser(
        "data",
        help="make, check and list speech corpora",
        description="Speech corpora in the VoxCeleb layout (ROOT/wav/<speaker>/<session>/"
        "<utt>.wav, ROOT/train.txt, ROOT/trials/*.txt): make the synthetic one, check one, "
        "or list one's training files.",
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = commands.add_parser(
        "synth",
        help="generate the offline synthetic corpus of a profile",
        description="Generate the synthetic VoxCeleb-layout corpus (see data/README.md).",
    )
    synth.add_argument("--root", help="where to write it (default: the profile's data root)")
    synth.add_argument(
        "--profile",
        default=None,
        choices=["ci", "laptop"],
        help="whose corpus settings and root (default: $SVLAB_PROFILE or ci)",
    )
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

    sets = commands.add_parser(
        "augment-sets",
        help="generate the offline MUSAN and RIRS_NOISES stand-ins of a profile",
        description="Generate the stand-in noise set (MUSAN layout: noise/, music/, speech/) and "
        "simulated room impulse responses (RIRS_NOISES layout: simulated_rirs/) that the ci and "
        "laptop profiles augment with (see data/README.md); a current set is kept.",
    )
    sets.add_argument("--profile", default=None, choices=["ci", "laptop"],
                      help="whose seed and folders (default: $SVLAB_PROFILE or ci)")  # fmt: skip
    sets.add_argument("--musan", help="where to write the noise set (default: the profile's)")
    sets.add_argument("--rirs", help="where to write the responses (default: the profile's)")
    sets.add_argument("--force", action="store_true", help="make them again even if current")
    sets.set_defaults(func=_augment_sets)

    check = commands.add_parser(
        "check",
        help="check a corpus: every listed file exists and reads",
        description="Check ROOT/train.txt and ROOT/trials/*.txt: print speaker, utterance, "
        "trial and sample-rate counts, then one line per bad file (missing, unreadable, empty "
        "or silent) and how many are bad; exit status 1 if any is.",
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
