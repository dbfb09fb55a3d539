"""Log mel filterbank features: kaldi fbank (svlab, wespeaker; 3D-Speaker's) and SpeechBrain's."""

from __future__ import annotations

import math

import torch
import torchaudio.compliance.kaldi as kaldi


def _batch_of_waves(waves: torch.Tensor, front_end: str) -> torch.Tensor:
    """``waves`` as a batch ``[B, N]`` (one waveform ``[N]`` becomes a batch of one)."""
    if waves.dim() == 1:
        waves = waves.unsqueeze(0)
    if waves.dim() != 2:
        raise ValueError(
            f"{front_end} expects waveforms [B, N] or [N], got shape {tuple(waves.shape)}"
        )
    return waves


def fbank(
    waves: torch.Tensor,
    sample_rate: int = 16000,
    n_mels: int = 80,
    dither: float = 0.0,
    cmn: bool = True,
) -> torch.Tensor:
    """80-dim kaldi fbank of a batch of waveforms, with mean normalisation over time.

    ``waves`` is ``[B, N]`` (or one waveform ``[N]``) with samples in [-1, 1]. As in
    wespeaker's VoxCeleb recipe the samples are scaled by 2**15, framed at 25 ms with a 10 ms
    shift under a Hamming window, and each utterance's mean vector is subtracted (CMN). Use
    ``dither=1.0`` in training only: at test time it would make one utterance give two
    embeddings. The result is ``[B, T, n_mels]`` with ``T = 1 + (N - 400) // 160`` at 16 kHz.

    >>> fbank(torch.zeros(2, 16000) + 0.01 * torch.randn(2, 16000)).shape
    torch.Size([2, 98, 80])
    """
    return _kaldi_features(waves, "fbank", sample_rate, cmn, scale=1 << 15, num_mel_bins=n_mels,
                           frame_length=25, frame_shift=10, dither=dither, energy_floor=0.0,
                           window_type="hamming")  # fmt: skip


def _kaldi_features(
    waves: torch.Tensor, front_end: str, sample_rate: int, cmn: bool, scale: float, **options
) -> torch.Tensor:
    """torchaudio's kaldi fbank of each waveform of a batch (samples times ``scale``) with
    ``options``, stacked, each utterance's mean subtracted when ``cmn``."""
    waves = _batch_of_waves(waves, front_end)
    window = int(0.025 * sample_rate)
    if waves.shape[1] < window:
        raise ValueError(
            f"waveforms of {waves.shape[1]} samples are shorter than one 25 ms frame ({window})"
        )
    feats = torch.stack(
        [kaldi.fbank(wave.unsqueeze(0) * scale, sample_frequency=sample_rate, **options)
         for wave in waves.float()]
    )  # fmt: skip
    if cmn:
        feats = feats - feats.mean(dim=1, keepdim=True)
    return feats


def _mel_matrix(n_mels: int, n_fft: int, sample_rate: int, f_max: float) -> torch.Tensor:
    """SpeechBrain's triangular mel filters ``[n_fft // 2 + 1, n_mels]``: centres equally spaced
    in mel from 0 Hz to ``f_max``, each triangle as wide on both sides as its left band."""
    mels = torch.linspace(0.0, 2595 * math.log10(1 + f_max / 700), n_mels + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    band, centre = (hz[1:] - hz[:-1])[:-1], hz[1:-1]
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slope = (freqs.repeat(n_mels, 1) - centre.repeat(n_fft // 2 + 1, 1).T) / band.repeat(
        n_fft // 2 + 1, 1
    ).T
    return torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0.0).T


def speechbrain_fbank(
    waves: torch.Tensor,
    sample_rate: int = 16000,
    n_mels: int = 80,
    dither: float = 0.0,
    cmn: bool = True,
) -> torch.Tensor:
    """SpeechBrain's ``Fbank(n_mels=80)`` and sentence mean normalisation, in plain torch: the
    front end of ``spkrec-ecapa-voxceleb`` (not kaldi fbank).

    Samples stay in [-1, 1]; a centred STFT (400-point FFT, 25 ms Hamming window, 10 ms hop,
    zero padding) gives the power spectrum, triangular mel filters up to 8 kHz sum it, and
    ``10 log10(max(., 1e-10))`` is clipped from below at 80 dB under each utterance's maximum;
    then each utterance's mean vector is subtracted. ``dither`` adds Gaussian noise of that
    standard deviation in 16-bit sample units (SpeechBrain's recipe uses none). The result
    is ``[B, T, n_mels]`` with ``T = 1 + N // 160`` at 16 kHz.

    >>> speechbrain_fbank(0.01 * torch.randn(2, 16000)).shape
    torch.Size([2, 101, 80])
    """
    waves = _batch_of_waves(waves, "speechbrain_fbank")
    n_fft, hop = round(0.025 * sample_rate), round(0.010 * sample_rate)
    if waves.shape[1] <= n_fft // 2:
        raise ValueError(
            f"waveforms of {waves.shape[1]} samples are too short for a {n_fft}-point STFT"
        )
    waves = waves.float()
    if dither:
        waves = waves + dither / (1 << 15) * torch.randn_like(waves)
    spec = torch.stft(
        waves, n_fft, hop, n_fft, torch.hamming_window(n_fft), center=True, pad_mode="constant",
        return_complex=True,
    )  # fmt: skip
    power = torch.view_as_real(spec).pow(2).sum(-1).transpose(1, 2)
    mel = power @ _mel_matrix(n_mels, n_fft, sample_rate, sample_rate / 2)
    db = 10 * torch.log10(torch.clamp(mel, min=1e-10))
    feats = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - 80.0)
    if cmn:
        feats = feats - feats.mean(dim=1, keepdim=True)
    return feats


def speakerlab_fbank(
    waves: torch.Tensor,
    sample_rate: int = 16000,
    n_mels: int = 80,
    dither: float = 0.0,
    cmn: bool = True,
) -> torch.Tensor:
    """3D-Speaker's front end (speakerlab's ``FBank(80, 16000, mean_nor=True)``): kaldi fbank
    with kaldi's own defaults, the front end of its CAM++ and ERes2Net models.

    It differs from :func:`fbank` in three settings: the samples stay in [-1, 1] (not scaled
    by 2**15, so quiet mel bands reach kaldi's log floor sooner), the window is kaldi's
    default "povey" (not Hamming), and ``dither`` is in those unscaled units. Each utterance's
    mean vector is subtracted. The result is ``[B, T, n_mels]``, ``T = 1 + (N - 400) // 160``.

    >>> speakerlab_fbank(0.01 * torch.randn(2, 16000)).shape
    torch.Size([2, 98, 80])
    """
    return _kaldi_features(waves, "speakerlab_fbank", sample_rate, cmn, scale=1.0,
                           num_mel_bins=n_mels, dither=dither)


FRONT_ENDS = {"kaldi": fbank, "speechbrain": speechbrain_fbank, "speakerlab": speakerlab_fbank}


def front_end_of(model: torch.nn.Module) -> str:
    """The name of the front end ``model`` was trained on: its ``front_end`` attribute (set by
    the wespeaker and SpeechBrain variants, see :func:`svlab.models.load_pretrained`), else
    ``"kaldi"``, the front end of every model svlab trains.

    >>> from svlab.models import build
    >>> front_end_of(build("resnet18", base_width=2)), front_end_of(build("ecapa_c1024_speechbrain",
    ...     channels=8, scale=4, mfa_channels=16))
    ('kaldi', 'speechbrain')
    """
    name = getattr(model, "front_end", "kaldi")
    if name not in FRONT_ENDS:
        raise ValueError(f"model front end {name!r} is unknown; known: {sorted(FRONT_ENDS)}")
    return name


def featurize(waves: torch.Tensor, front_end: str = "kaldi", cmn: bool = True) -> torch.Tensor:
    """Features of ``waves`` by the front end called ``front_end`` (a key of ``FRONT_ENDS``).

    >>> featurize(0.01 * torch.randn(16000), "speechbrain").shape
    torch.Size([1, 101, 80])
    >>> featurize(torch.zeros(16000), "mfcc")
    Traceback (most recent call last):
    ...
    ValueError: unknown front end 'mfcc'; known: ['kaldi', 'speakerlab', 'speechbrain']
    """
    if front_end not in FRONT_ENDS:
        raise ValueError(f"unknown front end {front_end!r}; known: {sorted(FRONT_ENDS)}")
    return FRONT_ENDS[front_end](waves, cmn=cmn)
