"""Baselines scored on the same fixed episodes as the model."""
import torch


def nearest_class_mean_accuracies(eval_set, batch_size=64):
    """Accuracy (E,) of labelling each query by the nearest class mean of the raw support items
    (Euclidean distance on flattened pixels or features)."""
    accuracies = []
    for ep in eval_set.batches(batch_size):
        E, way = ep.support.shape[0], eval_set.way
        support, query = ep.support.flatten(2).float(), ep.query.flatten(2).float()
        onehot = torch.nn.functional.one_hot(ep.y_support, way).float()       # (E, Ns, way)
        means = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)  # (E, way, P)
        predicted = torch.cdist(query, means).argmin(-1)                       # (E, Nq)
        accuracies.append((predicted == ep.y_query).float().mean(1))
    return torch.cat(accuracies).numpy()
