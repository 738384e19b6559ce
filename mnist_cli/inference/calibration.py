"""How honest a model's confidence is: expected calibration error, the reliability table behind it, and
temperature scaling (Guo et al., 2017) fitted on the validation split.

The confidence of a prediction is its top probability. Predictions are put into BINS equal-width bins by
confidence; the expected calibration error is the mean gap |accuracy - confidence| of the bins, weighted by
how many predictions each holds. A model whose 0.9-confident answers are right 90% of the time has none.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn.functional as F

BINS = 15  # Guo et al.'s choice; also torchmetrics' default


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> List[Dict]:
    """One row per confidence bin (lower, upper, count, accuracy, confidence); an empty bin has count 0 and
    null accuracy and confidence. Bin i holds confidences in (i/bins, (i+1)/bins], the first also 0."""
    confidence, predicted = probs.max(1)
    right = (predicted == labels).double()
    index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    rows = []
    for i in range(bins):
        chosen = index == i
        count = int(chosen.sum())
        rows.append(
            {
                "lower": i / bins,
                "upper": (i + 1) / bins,
                "count": count,
                "accuracy": right[chosen].mean().item() if count else None,
                "confidence": confidence[chosen].double().mean().item() if count else None,
            }
        )
    return rows


def expected_calibration_error(rows: List[Dict]) -> float:
    """The count-weighted mean of |accuracy - confidence| over the bins of a reliability table."""
    total = sum(row["count"] for row in rows)
    return sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]) / total


def calibration_report(logits: torch.Tensor, labels: torch.Tensor) -> Dict:
    """ece, nll (the mean negative log-likelihood of the true class: the cross-entropy) and the reliability table."""
    rows = reliability(logits.float().softmax(1), labels)
    return {
        "ece": expected_calibration_error(rows),
        "nll": F.cross_entropy(logits.float(), labels).item(),
        "reliability": rows,
    }


LOG_T_RANGE = (math.log(0.05), math.log(20.0))  # a validation split the model gets all right pulls T to 0: bounded


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T in [0.05, 20] that minimises the negative log-likelihood of softmax(logits / T) on
    these (validation) logits: a golden-section search over log T (the NLL has one minimum there). T > 1
    softens an overconfident model; the predicted classes never change."""
    logits, labels = logits.detach().float(), labels.detach()

    def nll(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), labels).item()

    low, high = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    nll_a, nll_b = nll(a), nll(b)
    for _ in range(60):  # the bracket shrinks to 0.618^60 of its width: far below any digit that matters
        if nll_a <= nll_b:
            high, b, nll_b = b, a, nll_a
            a = high - ratio * (high - low)
            nll_a = nll(a)
        else:
            low, a, nll_a = a, b, nll_b
            b = low + ratio * (high - low)
            nll_b = nll(b)
    return math.exp((low + high) / 2)


def at_a_bound(temperature: float) -> bool:
    """Whether a fitted temperature sits at the edge of the search (within 1%): no minimum was found inside,
    and the number is the range's, not the model's."""
    low, high = (math.exp(edge) for edge in LOG_T_RANGE)
    return temperature <= low * 1.01 or temperature >= high / 1.01
