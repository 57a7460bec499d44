"""Numerical robustness of the EM functions (hypothesis): identical points, far-apart points, K = N,
components that receive no responsibility.  No NaN or Inf, responsibilities sum to 1, variances > 0."""
import torch
from hypothesis import given, settings, strategies as st

from metagmvae import gmm

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def episodes(draw):
    """(z (B, N, D) float32, K): clustered, identical or far-apart points."""
    B, N, D = draw(st.integers(1, 3)), draw(st.integers(1, 24)), draw(st.integers(1, 6))
    K = draw(st.integers(1, N))
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["gaussian", "identical", "far", "offset"]))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, N, D, generator=g)
    if kind == "identical":
        z = z[:, :1].expand(B, N, D).clone()
    elif kind == "far":  # |z| ~ 1e4, clusters far apart
        z = z * 1e4
    elif kind == "offset":  # a tight episode far from the origin
        z = 1e4 + 1e-2 * z
    return z, K


@SETTINGS
@given(episodes(), st.booleans())
def test_unsupervised_em_stays_finite(episode, fix_pi):
    z, K = episode
    log_pi, mu = gmm.fit_gmm_em(z, K, 10, fix_pi=fix_pi)
    assert torch.isfinite(mu).all()
    assert torch.allclose(log_pi.exp().sum(-1), torch.ones(len(z)), atol=1e-5)
    resp = torch.softmax(log_pi.unsqueeze(-1) + gmm.log_normal_identity(z, mu), dim=1)
    assert torch.isfinite(resp).all() and torch.allclose(resp.sum(1), torch.ones(z.shape[:2]), atol=1e-5)
    assert torch.isfinite(gmm.episode_prior_log_prob(z, K, 10, fix_pi)).all()


@SETTINGS
@given(episodes(), st.integers(1, 4))
def test_semi_supervised_prediction_stays_finite(episode, samples):
    z, K = episode
    B, N, D = z.shape
    if N < 2 * K:
        K = max(1, N // 2)
    support = z[:, :K].unsqueeze(2).expand(B, K, samples, D)  # one support item per class
    query = z[:, K:].unsqueeze(2).expand(B, N - K, samples, D)
    labels = torch.arange(K).expand(B, K)
    points = lambda t: t.reshape(B, -1, D)  # noqa: E731
    mu, var = gmm.semi_supervised_em(points(support), labels.repeat_interleave(samples, 1), points(query), K, 10)
    assert torch.isfinite(mu).all() and (var > 0).all() and torch.isfinite(var).all()
    probs = gmm.predict_query(support, labels, query, K, 10)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(B, N - K), atol=1e-5)


def test_variance_floor_does_not_touch_normal_data():
    torch.manual_seed(0)
    z = torch.randn(4, 60, 8)
    labels = torch.arange(5).repeat(4).expand(4, 20)
    _, var = gmm.semi_supervised_em(z[:, :20], labels, z[:, 20:], 5, 10)
    assert var.min() > 100 * gmm.VAR_FLOOR
