"""The training crops a config asks for: its corpus, front end and augmentation."""

from __future__ import annotations

from pathlib import Path

from svlab.data import SpeakerCrops
from svlab.data.augment import Augmentation, Augmenter
from svlab.profiles import get_profile
from svlab.train.config import ConfigError, TrainConfig


def augmenter(cfg: TrainConfig) -> Augmenter | None:
    """The :class:`svlab.data.augment.Augmenter` of ``cfg.augment``, reading the MUSAN and
    RIRS_NOISES folders it names or, when it names none, the profile's (made first when they
    are the offline stand-ins); None when nothing is augmented.

    >>> augmenter(TrainConfig()) is None, augmenter(TrainConfig(augment={"speeds": [1.0, 1.1]}))
    (True, <svlab.data.augment.Augmenter object at ...>)
    """
    settings = Augmentation.from_dict(cfg.augment)
    if not settings.active:
        return None
    needs_files = max(settings.noise_prob, settings.music_prob, settings.babble_prob,
                      settings.reverb_prob) > 0  # fmt: skip
    musan, rirs = Path(settings.musan), Path(settings.rirs)
    if needs_files and not (settings.musan and settings.rirs):
        default_musan, default_rirs = get_profile(cfg.profile).ensure_augment_sets()
        musan = musan if settings.musan else default_musan
        rirs = rirs if settings.rirs else default_rirs
    return Augmenter(settings, musan, rirs)


def training_crops(cfg: TrainConfig, root: Path, front_end: str = "kaldi") -> SpeakerCrops:
    """The crops :func:`svlab.train.train` trains on: ``root``'s train list, cut to
    ``cfg.crop_frames``, features of ``front_end``, augmented as ``cfg.augment`` says.

    >>> training_crops(TrainConfig(augment={"noise_prob": 0.5}), Path("/no/corpus"))
    Traceback (most recent call last):
    ...
    svlab.train.config.ConfigError: augment: noise, reverberation and speed change the audio, ...
    """
    if Augmentation.from_dict(cfg.augment).on_audio and cfg.precompute_features:
        raise ConfigError(
            "augment: noise, reverberation and speed change the audio, so the features cannot "
            "be precomputed: set precompute_features = false"
        )
    return SpeakerCrops.from_corpus(
        root, cfg.crop_frames, cfg.seed, cfg.precompute_features, cfg.dither, front_end,
        augment=augmenter(cfg),
    )  # fmt: skip
