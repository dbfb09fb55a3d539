"""Log mel filterbank features (kaldi fbank), as speaker-verification recipes compute them."""

from __future__ import annotations

import torch
import torchaudio.compliance.kaldi as kaldi


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
    if waves.dim() == 1:
        waves = waves.unsqueeze(0)
    if waves.dim() != 2:
        raise ValueError(f"fbank expects waveforms [B, N] or [N], got shape {tuple(waves.shape)}")
    window = int(0.025 * sample_rate)
    if waves.shape[1] < window:
        raise ValueError(
            f"waveforms of {waves.shape[1]} samples are shorter than one 25 ms frame ({window})"
        )
    feats = torch.stack(
        [
            kaldi.fbank(
                wave.unsqueeze(0) * (1 << 15),
                num_mel_bins=n_mels,
                frame_length=25,
                frame_shift=10,
                dither=dither,
                energy_floor=0.0,
                window_type="hamming",
                sample_frequency=sample_rate,
            )
            for wave in waves.float()
        ]
    )
    if cmn:
        feats = feats - feats.mean(dim=1, keepdim=True)
    return feats
