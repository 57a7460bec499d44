"""Few-shot accuracy summary."""
import numpy as np


def mean_confidence_interval(accuracies):
    """Mean and 95% half-width 1.96 * std / sqrt(E) (population std, ddof=0, as the reference)."""
    acc = np.asarray(accuracies, dtype=np.float64)
    return float(acc.mean()), float(1.96 * acc.std() / np.sqrt(len(acc)))
