"""Baselines scored on the same fixed episodes as the model."""
import torch


def nearest_class_mean_accuracies(eval_set, batch_size=64):
    """Accuracy (E,) of labelling each query by the nearest class mean of the raw support items
    (Euclidean distance on flattened pixels or features)."""
    accuracies = []
    for ep, _ in eval_set.batches(batch_size):
        way = eval_set.way
        support, query = ep.support.flatten(2).float(), ep.query.flatten(2).float()
        onehot = torch.nn.functional.one_hot(ep.y_support, way).float()       # (E, Ns, way)
        means = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)  # (E, way, P)
        predicted = torch.cdist(query, means).argmin(-1)                       # (E, Nq)
        accuracies.append((predicted == ep.y_query).float().mean(1))
    return torch.cat(accuracies).numpy()


def logistic_regression_accuracies(eval_set, steps=100, lr=0.1, weight_decay=1e-3, batch_size=256):
    """Accuracy (E,) of a softmax regression fitted to each episode's support set alone.

    All episodes of a batch are fitted at once (their losses are independent): weights (E, P, way) and
    biases (E, way), full-batch Adam on the mean cross-entropy + weight_decay * |W|^2, inputs L2-normalised.
    """
    accuracies = []
    for ep, _ in eval_set.batches(batch_size):
        support = torch.nn.functional.normalize(ep.support.flatten(2).float(), dim=-1)  # (E, Ns, P)
        query = torch.nn.functional.normalize(ep.query.flatten(2).float(), dim=-1)      # (E, Nq, P)
        E, _, P = support.shape
        weight = torch.zeros(E, P, eval_set.way, requires_grad=True)
        bias = torch.zeros(E, 1, eval_set.way, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                logits = support @ weight + bias
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ep.y_support.flatten())
                loss = E * loss + weight_decay * weight.pow(2).sum()  # E * mean: each episode's own mean loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            predicted = (query @ weight + bias).argmax(-1)
        accuracies.append((predicted == ep.y_query).float().mean(1))
    return torch.cat(accuracies).numpy()
