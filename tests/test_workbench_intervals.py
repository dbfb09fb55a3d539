"""The workbench's EER comes with its speaker-bootstrap interval and the paired gap to fp32."""

import numpy as np
import torch

from svlab.evaluate import EvalSet
from svlab.metrics import eer_difference_interval, eer_interval
from svlab.models import ResNet
from svlab.workbench.engine import INTERVAL_RESAMPLES, LiveQuantizer
from svlab.workbench.widgets import Workbench


def speaker_evalset(n_speakers: int = 6, per_speaker: int = 3) -> EvalSet:
    gen = torch.Generator().manual_seed(1)
    keys = [f"spk{s}/v/{u}.wav" for s in range(n_speakers) for u in range(per_speaker)]
    offsets = torch.randn(n_speakers, 1, 16, generator=gen)
    feats = torch.stack([offsets[s, 0] + 0.5 * torch.randn(20, 16, generator=gen)
                         for s in range(n_speakers) for _ in range(per_speaker)])
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]]
    labels = np.array([int(a.split("/")[0] == b.split("/")[0]) for a, b in pairs])
    return EvalSet(keys, [feats], torch.zeros(len(keys), 16), pairs, labels)


def test_summary_intervals_are_the_speaker_bootstrap_of_the_same_trials():
    torch.manual_seed(0)
    evalset = speaker_evalset()
    live = LiveQuantizer(ResNet([1, 1], 4, feat_dim=16, embed_dim=8, strides=(1, 2)), evalset)
    fp32 = live.current.scores
    live.set_all(2)
    summary = live.summary()
    speakers = np.array([[k.split("/")[0] for k in pair] for pair in evalset.pairs])
    trials = (evalset.labels, speakers[:, 0], speakers[:, 1])
    expected = eer_interval(live.current.scores, *trials, resamples=INTERVAL_RESAMPLES, seed=0)
    assert (summary["eer"], summary["eer_low"], summary["eer_high"]) == expected
    delta = eer_difference_interval(fp32, live.current.scores, *trials,
                                    resamples=INTERVAL_RESAMPLES, seed=0)
    assert (summary["delta"], summary["delta_low"], summary["delta_high"]) == delta
    assert summary["eer_low"] <= summary["eer"] <= summary["eer_high"]


def test_numbers_panel_shows_the_interval_and_the_verdict():
    torch.manual_seed(0)
    wb = Workbench(LiveQuantizer(ResNet([1, 1], 4, feat_dim=16, embed_dim=8, strides=(1, 2)),
                                 speaker_evalset()))
    text = wb.numbers.value
    assert "EER (95% interval)" in text and "EER - fp32, paired" in text
    assert "+0.00 points [+0.00, +0.00], not resolved" in text  # fp32 against itself
