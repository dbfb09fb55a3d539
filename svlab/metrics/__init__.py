"""Verification metrics: EER, minDCF and DET from one sort (``rates``), cosine scoring, and
speaker-bootstrap intervals of one system and of paired differences (``intervals``)."""

from svlab.metrics.intervals import (
    SimulatedTrials,
    eer_difference_interval,
    eer_interval,
    format_difference,
    format_interval,
    min_dcf_difference_interval,
    min_dcf_interval,
    resolved,
    simulate_trials,
    weighted_eer,
    weighted_min_dcf,
)
from svlab.metrics.rates import (
    cosine_scores,
    det_curve,
    eer,
    error_rates,
    min_dcf,
    verification_result,
)

__all__ = [
    "SimulatedTrials",
    "cosine_scores",
    "det_curve",
    "eer",
    "eer_difference_interval",
    "eer_interval",
    "error_rates",
    "format_difference",
    "format_interval",
    "min_dcf",
    "min_dcf_difference_interval",
    "min_dcf_interval",
    "resolved",
    "simulate_trials",
    "verification_result",
    "weighted_eer",
    "weighted_min_dcf",
]
