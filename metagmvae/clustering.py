"""Grouping an unlabeled set: the training-time EM with several random starts, k-means with k-means++
starts, and two scores of a partition against known classes (adjusted Rand index, normalised mutual
information).

Shapes: N items, S MC samples per item, R restarts (a batch dimension: all restarts run at once),
K clusters, D latent size, F feature size.  Every random start comes from an EpisodeRandom with one
stream per restart, so a --seed gives the same clusters on any machine.
"""
import torch

from .episodes import EpisodeRandom
from .gmvae import check_items_told_apart
from .gmm import _weighted_means, fit_gmm_em, log_normal_identity, mixture_log_prob, squared_distances

KMEANS_ITERS = 100  # Lloyd iterations at most; the restarts stop together once none of them moves


def restart_streams(seed, purpose, restarts):
    """An EpisodeRandom with one stream per restart, keyed (seed, purpose, restart)."""
    return EpisodeRandom.for_episodes(range(restarts), seed, purpose)


@torch.no_grad()
def fit_gmm_restarts(z, num_components, em_iters, rng):
    """The training prior's EM (fit_gmm_em) from len(rng) random starts at once; keeps the start whose
    mixture gives the points the highest log-likelihood.

    z: (N, D) points, centred by the caller.  Returns log_pi (K,), mu (K, D) and the log-likelihood of
    every restart (R,).
    """
    restarts = len(rng)
    batch = z.unsqueeze(0).expand(restarts, *z.shape)  # (R, N, D), one random start per row
    log_pi, mu = fit_gmm_em(batch, num_components, em_iters, rng=rng)
    log_likelihood = mixture_log_prob(batch, log_pi, mu).sum(-1)  # (R,)
    best = log_likelihood.argmax()
    return log_pi[best], mu[best], log_likelihood


@torch.no_grad()
def assign_by_responsibility(z, log_pi, mu):
    """Each item's cluster and confidence: its responsibility under the mixture, averaged over its MC samples.

    z: (N, S, D), log_pi: (K,), mu: (K, D).  Returns cluster (N,) int64 and confidence (N,) in (0, 1].
    """
    N, S, D = z.shape
    log_joint = log_pi.unsqueeze(-1) + log_normal_identity(z.reshape(1, N * S, D), mu[None])[0]  # (K, N S)
    responsibility = torch.softmax(log_joint, dim=0).view(-1, N, S).mean(-1)  # (K, N)
    confidence, cluster = responsibility.max(0)
    return cluster, confidence


@torch.no_grad()
def cluster_latents(z, num_clusters, em_iters, rng):
    """Clusters of N items from their MC latent samples z: (N, S, D), as the training prior groups a set:
    EM on all N S samples, centred (identity covariances make the fit translation-equivariant), from
    len(rng) starts.  Returns cluster (N,), confidence (N,) and the kept mixture's log_pi (K,) and
    mu (K, D) in z's coordinates."""
    centre = z.mean(dim=(0, 1))
    centred = z - centre
    log_pi, mu, _ = fit_gmm_restarts(centred.flatten(0, 1), num_clusters, em_iters, rng)
    cluster, confidence = assign_by_responsibility(centred, log_pi, mu)
    return cluster, confidence, log_pi, mu + centre


@torch.no_grad()
def cluster_set(model, items, num_clusters, mc_samples, em_iters, rng, noise_rng, chunk_size):
    """A SetGMVAE's clusters of one unlabeled set (the model in evaluation mode).

    items: (N, *item_shape), encoded as ONE set: the per-item encoder runs on chunk_size items at a time,
    the set-level posterior on all N.  noise_rng (an EpisodeRandom of one stream) draws the S MC samples,
    rng the EM starts (see cluster_latents).  Returns cluster (N,), confidence (N,), log_pi (K,), mu (K, D).
    """
    mean, logvar = model.posterior_params(items[None], chunk_size)
    check_items_told_apart(mean, logvar)
    z, _ = model.sample(mean, logvar, mc_samples, noise_rng)  # (1, N, S, D)
    return cluster_latents(z[0], num_clusters, em_iters, rng)


def _kmeans_plus_plus(x, num_clusters, rng):
    """k-means++ starts of len(rng) restarts: the first centre uniform, each next one drawn with
    probability proportional to the squared distance to the nearest centre so far.

    x: (R, N, F) (the same points in every row) -> centres (R, K, F).
    """
    R, N, F = x.shape
    uniforms = rng.rand(R, num_clusters).to(x.device)  # (R, K): one draw per centre
    first = (uniforms[:, 0] * N).long().clamp_max(N - 1)
    centres = x[torch.arange(R), first].unsqueeze(1)  # (R, 1, F)
    nearest = squared_distances(x, centres)[:, 0]  # (R, N)
    for k in range(1, num_clusters):
        cumulative = nearest.cumsum(-1)  # (R, N)
        target = uniforms[:, k:k + 1] * cumulative[:, -1:]
        pick = torch.searchsorted(cumulative, target).clamp_max(N - 1)  # (R, 1)
        new = torch.gather(x, 1, pick.unsqueeze(-1).expand(R, 1, F))
        centres = torch.cat([centres, new], dim=1)
        nearest = torch.minimum(nearest, squared_distances(x, new)[:, 0])
    return centres


@torch.no_grad()
def kmeans(x, num_clusters, rng, iters=KMEANS_ITERS):
    """k-means (Lloyd) from len(rng) k-means++ starts at once; keeps the restart of lowest inertia.

    x: (N, F).  Returns labels (N,) int64, centres (K, F) and the inertia (sum of squared distances to
    the nearest centre) of every restart (R,).  An empty cluster keeps its centre.
    """
    x = x.to(torch.float64)  # distances as |x|^2 - 2 c.x + |c|^2: float32 loses small gaps on raw pixels
    batch = x.unsqueeze(0).expand(len(rng), *x.shape)  # (R, N, F)
    centres = _kmeans_plus_plus(batch, num_clusters, rng)
    x_sq = x.square().sum(-1).expand(len(rng), -1)
    labels = squared_distances(batch, centres, x_sq).argmin(1)  # (R, N)
    for _ in range(iters):
        onehot = torch.nn.functional.one_hot(labels, num_clusters).to(x.dtype).transpose(1, 2)  # (R, K, N)
        centres, _ = _weighted_means(onehot, batch, centres)
        new_labels = squared_distances(batch, centres, x_sq).argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    inertia = squared_distances(batch, centres, x_sq).amin(1).sum(-1)  # (R,)
    best = inertia.argmin()
    return labels[best], centres[best].to(torch.float32), inertia


def contingency_table(labels_a, labels_b):
    """Counts n_ij of items in class i of labels_a and class j of labels_b (any integer labels).

    labels_a, labels_b: (N,) -> (A, B) float64, A and B the numbers of distinct labels.
    """
    _, a = torch.unique(torch.as_tensor(labels_a), return_inverse=True)
    _, b = torch.unique(torch.as_tensor(labels_b), return_inverse=True)
    onehot_a = torch.nn.functional.one_hot(a).to(torch.float64)  # (N, A)
    onehot_b = torch.nn.functional.one_hot(b).to(torch.float64)  # (N, B)
    return onehot_a.T @ onehot_b


def _pairs(n):
    return n * (n - 1) / 2


def adjusted_rand_index(labels_a, labels_b):
    """Adjusted Rand index (Hubert & Arabie, 1985) of two partitions of the same N items.

    ARI = (index - expected) / (max - expected), with index = sum_ij C(n_ij, 2),
    expected = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(N, 2) and max = (sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2.
    1 for the same partition (up to relabelling), about 0 for independent ones.  Two partitions both made
    of one cluster, or both of singletons, agree: 1.
    """
    table = contingency_table(labels_a, labels_b)
    index = _pairs(table).sum()
    rows, cols = _pairs(table.sum(1)).sum(), _pairs(table.sum(0)).sum()
    expected = rows * cols / _pairs(table.sum())
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else float((index - expected) / (maximum - expected))


def _entropy(counts):
    p = counts / counts.sum()
    return -(p * p.log()).nansum()  # 0 log 0 = 0


def normalized_mutual_info(labels_a, labels_b):
    """Mutual information of two partitions divided by the mean of their entropies (natural logarithms;
    sklearn's default "arithmetic" normalisation).  1 for the same partition (up to relabelling), 0 for
    independent ones; two one-cluster partitions agree: 1."""
    table = contingency_table(labels_a, labels_b)
    joint = table / table.sum()
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    mutual_info = (joint * (joint / outer).log()).nansum()
    entropies = _entropy(table.sum(1)) + _entropy(table.sum(0))
    return 1.0 if entropies == 0 else float((mutual_info / (entropies / 2)).clamp(0, 1))
