"""Few-shot evaluation on fixed episodes: semi-supervised EM prediction, accuracy per episode, mean and
95% CI, and the baselines scored on the very same episodes.

Episode e's classes, items and MC noise are keyed by (seed, split, way, shot, e) (episodes.py), so its score does
not depend on the batch size or on how torchrun processes share the episodes.
"""
from contextlib import contextmanager

import numpy as np
import torch

from . import distributed
from .gmvae import autocast
from .runfiles import check_finite_result


@contextmanager
def seeded_eval(model, device, seed):
    """Evaluation mode (BatchNorm running statistics) and a private RNG seeded with `seed`; the model's
    mode and the global RNG state are restored afterwards, so training continues as if nothing ran."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def episode_accuracies(model, eval_set, mc_samples, em_iters, batch_size, device, amp=False):
    """Accuracy of each episode (E,), with the model in evaluation mode (BatchNorm running statistics).

    Each process scores its share of the episodes; every process returns all E, or raises NonFiniteResult
    when the class probabilities of any episode were not finite.
    """
    mine = distributed.share(len(eval_set))
    accuracies = [np.zeros(0, dtype=np.float32)]
    with seeded_eval(model, device, eval_set.seed):
        for episodes, rng in eval_set.batches(batch_size, mine.start, mine.stop):
            with autocast(device, amp):
                probs = model.predict(episodes.support.to(device), episodes.y_support.to(device),
                                      episodes.query.to(device), eval_set.way, mc_samples, em_iters, rng)
            correct = probs.argmax(-1).cpu() == episodes.y_query
            finite = torch.isfinite(probs).flatten(1).all(1).cpu()
            accuracies.append(torch.where(finite, correct.float().mean(1), torch.nan).numpy())
    accuracies = distributed.gather_rows(np.concatenate(accuracies))
    check_finite_result(torch.from_numpy(accuracies), "class probabilities")  # NaN marks such an episode
    return accuracies


MIN_EPISODES = 2  # the 95% half-width of one episode's accuracy is 0 whatever the model


def mean_confidence_interval(accuracies):
    """Mean and 95% half-width 1.96 * std / sqrt(E) (population std, ddof=0, as the reference) of E >=
    MIN_EPISODES accuracies."""
    acc = np.asarray(accuracies, dtype=np.float64)
    if len(acc) < MIN_EPISODES:
        raise ValueError(f"a confidence interval needs at least {MIN_EPISODES} episodes, got {len(acc)}")
    return float(acc.mean()), float(1.96 * acc.std() / np.sqrt(len(acc)))


def summarize(accuracies):
    mean, ci95 = mean_confidence_interval(accuracies)
    return {"mean": mean, "ci95": ci95, "episodes": int(len(np.asarray(accuracies)))}


def evaluate_shots(model, eval_sets, mc_samples, em_iters, batch_size, device, amp=False):
    """{shot: {"mean", "ci95", "episodes"}} of the model on each shot's fixed episodes ({shot: EvalSet})."""
    return {shot: summarize(episode_accuracies(model, eval_set, mc_samples, em_iters, batch_size, device, amp))
            for shot, eval_set in eval_sets.items()}


def result_key(eval_set):
    """"<way>way-<shot>shot", the key of results.json."""
    return f"{eval_set.way}way-{eval_set.shot}shot"


def with_baselines(test, test_sets, baselines, **fields):
    """results.json's content: the model's "test" entries, "baselines" scored on the very same test_sets
    ({name: EvalSet -> accuracies (E,)} -> {name: {"<way>way-<shot>shot": summary}}), and other fields."""
    scores = {name: {result_key(s): summarize(accuracies(s)) for s in test_sets.values()}
              for name, accuracies in baselines.items()}
    return {"test": test, "baselines": scores, **fields}


# ---- baselines: label the queries (E, Nq) of E episodes from their support items alone

def nearest_class_mean_predictions(support, y_support, query, way):
    """Labels (E, Nq) of the queries by the nearest class mean of the raw support items (Euclidean distance
    on flattened pixels or features).  support: (E, Ns, ...), y_support: (E, Ns), query: (E, Nq, ...)."""
    support, query = support.flatten(2).float(), query.flatten(2).float()
    onehot = torch.nn.functional.one_hot(y_support, way).float()           # (E, Ns, way)
    means = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)  # (E, way, P)
    return torch.cdist(query, means).argmin(-1)


def logistic_regression_predictions(support, y_support, query, way, steps=100, lr=0.1, weight_decay=1e-3):
    """Labels (E, Nq) of the queries by a softmax regression fitted to each episode's support set alone.
    support: (E, Ns, ...), y_support: (E, Ns), query: (E, Nq, ...).

    All E episodes are fitted at once (their losses are independent): weights (E, P, way) and biases
    (E, way), full-batch Adam on the mean cross-entropy + weight_decay * |W|^2, inputs L2-normalised.
    """
    support = torch.nn.functional.normalize(support.flatten(2).float(), dim=-1)  # (E, Ns, P)
    query = torch.nn.functional.normalize(query.flatten(2).float(), dim=-1)      # (E, Nq, P)
    E, _, P = support.shape
    weight = torch.zeros(E, P, way, requires_grad=True)
    bias = torch.zeros(E, 1, way, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logits = support @ weight + bias
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y_support.flatten())
            loss = E * loss + weight_decay * weight.pow(2).sum()  # E * mean: each episode's own mean loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (query @ weight + bias).argmax(-1)


def _baseline_accuracies(predictions, eval_set, batch_size):
    """Accuracy (E,) of `predictions` (one of the functions above) on the episodes of eval_set."""
    return torch.cat([(predictions(ep.support, ep.y_support, ep.query, eval_set.way) == ep.y_query).float().mean(1)
                      for ep, _ in eval_set.batches(batch_size)]).numpy()


def nearest_class_mean_accuracies(eval_set, batch_size=64):
    """Accuracy (E,) of nearest_class_mean_predictions on the episodes of eval_set."""
    return _baseline_accuracies(nearest_class_mean_predictions, eval_set, batch_size)


def logistic_regression_accuracies(eval_set, batch_size=256):
    """Accuracy (E,) of logistic_regression_predictions on the episodes of eval_set."""
    return _baseline_accuracies(logistic_regression_predictions, eval_set, batch_size)
