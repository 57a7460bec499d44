"""Gaussian-mixture EM of Meta-GMVAE, batched over episodes.

Shapes: B episodes, N latent points per episode (items x MC samples), K components, D latent size.
Densities and responsibilities are laid out (B, K, N): with K small, normalising over K along dim 1 is
several times faster than over a last dimension of size K, and (B, K, N) @ (B, N, D) gives the M-step.
Training fits an unsupervised mixture to each episode (the prior); testing fits one Gaussian per
class with a semi-supervised EM and labels queries by the class posterior averaged over MC samples.
Every EM result is a constant: inputs are detached, no gradient flows into pi, mu or var.
"""
import math

import torch

LOG_2PI = math.log(2 * math.pi)
VAR_FLOOR = 1e-6  # smallest class variance at test time; only reached by a collapsed class


def squared_distances(z, mu, z_sq=None):
    """|z_n - mu_k|^2 as |z|^2 - 2 mu.z + |mu|^2.  z: (B, N, D), mu: (B, K, D) -> (B, K, N).

    z_sq: the precomputed |z_n|^2 (B, N), reused across EM iterations.
    """
    z_sq = z.square().sum(-1) if z_sq is None else z_sq
    norms = mu.square().sum(-1).unsqueeze(-1) + z_sq.unsqueeze(1)
    return torch.baddbmm(norms, mu, z.transpose(1, 2), alpha=-2).clamp_min(0)


def log_normal_identity(z, mu, z_sq=None):
    """log N(z_n; mu_k, I).  z: (B, N, D), mu: (B, K, D) -> (B, K, N)."""
    return -0.5 * (squared_distances(z, mu, z_sq) + z.shape[-1] * LOG_2PI)


def log_normal_diag(z, mu, var):
    """log N(z_n; mu_k, diag var_k), expanded into matmuls.  z: (B, N, D), mu, var: (B, K, D) -> (B, K, N)."""
    inv_var = var.reciprocal()
    const = (mu.square() * inv_var + var.log()).sum(-1) + z.shape[-1] * LOG_2PI  # (B, K)
    quad = torch.baddbmm(const.unsqueeze(-1), inv_var, z.square().transpose(1, 2))
    quad = torch.baddbmm(quad, mu * inv_var, z.transpose(1, 2), alpha=-2)
    return -0.5 * quad


def mixture_log_prob(z, log_pi, mu):
    """log p(z) = logsumexp_k [log pi_k + log N(z; mu_k, I)].  z: (B, N, D), log_pi: (B, K) -> (B, N)."""
    return torch.logsumexp(log_pi.unsqueeze(-1) + log_normal_identity(z, mu), dim=1)


def _weighted_means(weights, z, previous):
    """Sum_n w_kn z_n / Sum_n w_kn; a component with no weight keeps `previous`.

    weights: (B, K, N), z: (B, N, D) -> means (B, K, D), totals (B, K).
    """
    total = weights.sum(-1)
    means = weights @ z / total.clamp_min(torch.finfo(z.dtype).tiny).unsqueeze(-1)
    return torch.where(total.unsqueeze(-1) > 0, means, previous), total


@torch.no_grad()
def fit_gmm_em(z, num_components, iters, fix_pi=False, rng=None):
    """Unsupervised EM with identity covariances (the training prior of one episode each).

    z: (B, N, D) latent points.  Returns log_pi (B, K) and mu (B, K, D), both detached.
    Init: pi uniform, mu = K distinct points of the episode drawn at random (from rng, an EpisodeRandom,
    or the global RNG when None).
    E-step: r_kn ∝ pi_k N(z_n; mu_k, I).  M-step: pi_k = N_k / N (unless fix_pi), mu_k = Σ_n r_kn z_n / N_k.
    """
    z = z.detach()
    B, N, D = z.shape
    K = num_components
    if K > N:
        raise ValueError(f"cannot fit {K} components to {N} points")
    scores = torch.rand(B, N, device=z.device) if rng is None else rng.rand(B, N).to(z.device)
    pick = scores.argsort(dim=1)[:, :K]
    mu = torch.gather(z, 1, pick.unsqueeze(-1).expand(B, K, D))
    log_pi = torch.full((B, K), -math.log(K), dtype=z.dtype, device=z.device)
    z_sq = z.square().sum(-1)
    for _ in range(iters):
        resp = torch.softmax(log_pi.unsqueeze(-1) + log_normal_identity(z, mu, z_sq), dim=1)
        mu, counts = _weighted_means(resp, z, mu)
        if not fix_pi:
            log_pi = (counts / counts.sum(-1, keepdim=True)).log()
    return log_pi, mu


@torch.no_grad()
def semi_supervised_em(z_support, y_support, z_query, num_classes, iters):
    """Semi-supervised EM: one diagonal Gaussian per class, pi uniform (the reference's test-time EM).

    z_support: (B, Ns, D) with labels y_support: (B, Ns) in [0, K); z_query: (B, Nq, D).
    Init: mu_k = mean of class-k support points, var_k = 1.  E-step on query points with identity
    covariance; M-step with weights y (support) and r (query) for mu_k and the diagonal var_k.
    Returns mu, var: (B, K, D).
    """
    z_support, z_query = z_support.detach(), z_query.detach()
    B, _, D = z_support.shape
    onehot = torch.nn.functional.one_hot(y_support, num_classes).to(z_support.dtype).transpose(1, 2)  # (B, K, Ns)
    if (onehot.sum(-1) == 0).any():
        raise ValueError("every class needs at least one support point")
    mu, _ = _weighted_means(onehot, z_support, z_support.new_zeros(B, num_classes, D))
    var = torch.ones_like(mu)
    z_all = torch.cat([z_support, z_query], dim=1)
    z_all_sq = z_all.square()
    z_query_sq = z_all_sq[:, z_support.shape[1]:].sum(-1)
    for _ in range(iters):
        resp = torch.softmax(log_normal_identity(z_query, mu, z_query_sq), dim=1)  # pi uniform cancels
        weights = torch.cat([onehot, resp], dim=2)
        mu, counts = _weighted_means(weights, z_all, mu)
        # One-pass variance E_w[z^2] - mu^2; the caller centres each episode, which keeps it exact
        # enough in float32.  The floor only guards an exactly collapsed class.
        second_moment = weights @ z_all_sq / counts.unsqueeze(-1)
        var = (second_moment - mu.square()).clamp_min(VAR_FLOOR)
    return mu, var


def predict_query(z_support, y_support, z_query, num_classes, iters):
    """Class posterior of each query item, averaged over its MC samples.

    z_support: (B, Ns, S, D), y_support: (B, Ns), z_query: (B, Nq, S, D).
    Returns probs (B, Nq, K); argmax gives the predicted class.
    """
    B, Ns, S, D = z_support.shape
    Nq = z_query.shape[1]
    # Centre each episode: EM results are translation-equivariant, float32 precision is not.
    centre = torch.cat([z_support, z_query], dim=1).mean(dim=(1, 2), keepdim=True)
    z_support, z_query = (z_support - centre).reshape(B, Ns * S, D), (z_query - centre).reshape(B, Nq * S, D)
    y_points = y_support.unsqueeze(-1).expand(B, Ns, S).reshape(B, Ns * S)
    mu, var = semi_supervised_em(z_support, y_points, z_query, num_classes, iters)
    probs = torch.softmax(log_normal_diag(z_query, mu, var), dim=1)  # (B, K, Nq * S); pi uniform cancels
    return probs.view(B, num_classes, Nq, S).mean(-1).transpose(1, 2)


def episode_prior_log_prob(z, num_components, iters, fix_pi=False, rng=None):
    """log p(z) under the mixture that EM fits to the episode's own points (the training prior).

    z: (B, N, D) -> (B, N).  Gradients flow through z only; the mixture is a constant.
    """
    # Centring by a constant changes no result (identity covariances) and keeps |z|^2 small.
    z = z - z.detach().mean(1, keepdim=True)
    log_pi, mu = fit_gmm_em(z, num_components, iters, fix_pi, rng)
    return mixture_log_prob(z, log_pi, mu)
