"""EM of the Gaussian mixture against naive per-point loops written from the formulas of docs/method.md."""
import math

import numpy as np
import pytest
import torch

from metagmvae import gmm
from metagmvae.episodes import EpisodeRandom
from metagmvae.evaluation import mean_confidence_interval



@pytest.fixture(autouse=True)
def float64():
    """The naive loops run in python floats; compare in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def naive_log_normal(z, mu, var):
    return sum(-0.5 * (math.log(2 * math.pi) + math.log(v) + (a - m) ** 2 / v) for a, m, v in zip(z, mu, var))


def naive_unsupervised_step(z, pi, mu):
    """One E + M step for one episode, point by point.  z: list of N vectors, pi: K, mu: K vectors."""
    N, K, D = len(z), len(pi), len(z[0])
    resp = []
    for n in range(N):
        logits = [math.log(pi[k]) + naive_log_normal(z[n], mu[k], [1.0] * D) for k in range(K)]
        top = max(logits)
        w = [math.exp(l - top) for l in logits]
        resp.append([x / sum(w) for x in w])
    counts = [sum(resp[n][k] for n in range(N)) for k in range(K)]
    new_pi = [c / sum(counts) for c in counts]
    new_mu = [[sum(resp[n][k] * z[n][d] for n in range(N)) / counts[k] for d in range(D)] for k in range(K)]
    return new_pi, new_mu


def test_log_densities_match_naive():
    torch.manual_seed(0)
    z, mu, var = torch.randn(2, 7, 3) * 3, torch.randn(2, 4, 3), torch.rand(2, 4, 3) + 0.1
    ident = gmm.log_normal_identity(z, mu)
    diag = gmm.log_normal_diag(z, mu, var)
    # the naive side in python floats (float64 values), so pytest.approx gets a float, never a 0-d tensor
    zl, mul, varl = z.tolist(), mu.tolist(), var.tolist()
    for b in range(2):
        for n in range(7):
            for k in range(4):
                assert ident[b, k, n].item() == pytest.approx(naive_log_normal(zl[b][n], mul[b][k], [1.0] * 3), abs=1e-9)
                assert diag[b, k, n].item() == pytest.approx(naive_log_normal(zl[b][n], mul[b][k], varl[b][k]), abs=1e-9)
    log_pi = torch.log_softmax(torch.randn(2, 4), -1)
    mix = gmm.mixture_log_prob(z, log_pi, mu)
    lp = log_pi.tolist()
    expected = math.log(sum(math.exp(lp[1][k] + naive_log_normal(zl[1][2], mul[1][k], [1.0] * 3)) for k in range(4)))
    assert mix[1, 2].item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("fix_pi", [False, True])
def test_unsupervised_em_matches_naive_loop(fix_pi):
    torch.manual_seed(1)
    B, N, D, K, iters = 3, 12, 4, 3, 4
    z = torch.randn(B, N, D) * 2
    log_pi, mu = gmm.fit_gmm_em(z, K, iters, fix_pi=fix_pi, rng=EpisodeRandom.for_episodes(range(B), 5))
    pick = EpisodeRandom.for_episodes(range(B), 5).rand(B, N).argsort(1)[:, :K]
    for b in range(B):
        init_mu = [z[b, i].tolist() for i in pick[b]]
        assert len({tuple(m) for m in init_mu}) == K  # K distinct points
        pi_n, mu_n = [1 / K] * K, init_mu
        for _ in range(iters):
            new_pi, mu_n = naive_unsupervised_step(z[b].tolist(), pi_n, mu_n)
            pi_n = pi_n if fix_pi else new_pi
        np.testing.assert_allclose(log_pi[b].exp().numpy(), pi_n, atol=1e-5)
        np.testing.assert_allclose(mu[b].numpy(), mu_n, atol=1e-5)


def test_em_recovers_separated_clusters():
    """EM from random points is a local method: where the initial points fall in distinct clusters,
    it must recover every mean and every label exactly."""
    torch.manual_seed(2)
    B, K, per, D = 64, 3, 40, 8
    centres = torch.randn(B, K, D) * 20
    labels = torch.arange(K).repeat_interleave(per)
    z = centres[:, labels] + torch.randn(B, K * per, D)
    log_pi, mu = gmm.fit_gmm_em(z, K, 20, rng=EpisodeRandom.for_episodes(range(B), 7))
    pick = EpisodeRandom.for_episodes(range(B), 7).rand(B, K * per).argsort(1)[:, :K]
    covered = [b for b in range(B) if len(set(labels[pick[b]].tolist())) == K]
    assert len(covered) >= 5
    for b in covered:
        match = torch.cdist(centres[b], mu[b]).argmin(1)  # true cluster -> fitted component
        assert sorted(match.tolist()) == list(range(K))
        np.testing.assert_allclose(mu[b][match].numpy(), z[b].view(K, per, D).mean(1).numpy(), atol=1e-6)
        assigned = gmm.log_normal_identity(z[b:b + 1], mu[b:b + 1]).argmax(1)[0]
        assert torch.equal(assigned, match[labels])
        np.testing.assert_allclose(log_pi[b].exp().numpy(), 1 / K, atol=1e-6)


def test_em_fit_has_no_gradient_but_prior_log_prob_does():
    z = torch.randn(2, 30, 4, requires_grad=True)
    log_pi, mu = gmm.fit_gmm_em(z, 3, 5)
    assert not log_pi.requires_grad and not mu.requires_grad
    log_p = gmm.episode_prior_log_prob(z, 3, 5)
    log_p.sum().backward()
    # with mu fixed, d log p / dz = -sum_k r_k (z - mu_k): non-zero and finite
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_prior_log_prob_is_unchanged_by_centring():
    torch.manual_seed(3)
    z = torch.randn(2, 50, 6) + 1e3
    centred = gmm.episode_prior_log_prob(z, 4, 10, rng=EpisodeRandom.for_episodes(range(2), 0))
    log_pi, mu = gmm.fit_gmm_em(z, 4, 10, rng=EpisodeRandom.for_episodes(range(2), 0))
    np.testing.assert_allclose(centred.numpy(), gmm.mixture_log_prob(z, log_pi, mu).numpy(), rtol=1e-9)


def test_semi_supervised_em_matches_naive_loop():
    torch.manual_seed(4)
    B, K, Ns, Nq, D, iters = 2, 3, 6, 9, 4, 3
    zs, zq = torch.randn(B, Ns, D), torch.randn(B, Nq, D) * 2
    ys = torch.arange(K).repeat(Ns // K).expand(B, Ns)
    mu, var = gmm.semi_supervised_em(zs, ys, zq, K, iters)
    for b in range(B):
        s, q, y = zs[b].tolist(), zq[b].tolist(), ys[b].tolist()
        mu_n = [[sum(s[n][d] for n in range(Ns) if y[n] == k) / y.count(k) for d in range(D)] for k in range(K)]
        for _ in range(iters):
            resp = []
            for n in range(Nq):
                logits = [naive_log_normal(q[n], mu_n[k], [1.0] * D) for k in range(K)]
                w = [math.exp(l - max(logits)) for l in logits]
                resp.append([x / sum(w) for x in w])
            weights = [[float(y[n] == k) for k in range(K)] for n in range(Ns)] + resp
            points = s + q
            tot = [sum(w[k] for w in weights) for k in range(K)]
            mu_n = [[sum(w[k] * p[d] for w, p in zip(weights, points)) / tot[k] for d in range(D)] for k in range(K)]
            var_n = [[sum(w[k] * (p[d] - mu_n[k][d]) ** 2 for w, p in zip(weights, points)) / tot[k]
                      for d in range(D)] for k in range(K)]
        np.testing.assert_allclose(mu[b].numpy(), mu_n, atol=1e-5)
        np.testing.assert_allclose(var[b].numpy(), var_n, atol=1e-5)


def test_semi_supervised_em_without_iterations_is_class_means_unit_var():
    zs = torch.tensor([[[0.0, 0.0], [2.0, 2.0], [10.0, 0.0]]])
    mu, var = gmm.semi_supervised_em(zs, torch.tensor([[0, 0, 1]]), torch.zeros(1, 1, 2), 2, 0)
    np.testing.assert_allclose(mu[0].numpy(), [[1.0, 1.0], [10.0, 0.0]])
    np.testing.assert_allclose(var.numpy(), 1.0)


def test_predict_query_classifies_separable_clusters_perfectly():
    torch.manual_seed(5)
    B, K, shot, query, S, D = 3, 5, 1, 15, 8, 16
    centres = torch.randn(B, K, D) * 10
    ys = torch.arange(K).repeat_interleave(shot).expand(B, -1)
    yq = torch.arange(K).repeat_interleave(query).expand(B, -1)
    zs = centres[torch.arange(B)[:, None], ys].unsqueeze(2) + torch.randn(B, K * shot, S, D)
    zq = centres[torch.arange(B)[:, None], yq].unsqueeze(2) + torch.randn(B, K * query, S, D)
    perm = torch.randperm(K * query)  # query order must not matter
    probs = gmm.predict_query(zs, ys, zq[:, perm], K, 10)
    assert probs.shape == (B, K * query, K)
    np.testing.assert_allclose(probs.sum(-1).numpy(), 1.0, atol=1e-9)
    assert torch.equal(probs.argmax(-1), yq[:, perm])


def test_predict_query_averages_posteriors_over_mc_samples():
    torch.manual_seed(6)
    zs = torch.randn(1, 2, 3, 2)
    zq = torch.randn(1, 4, 3, 2)
    ys = torch.tensor([[0, 1]])
    probs = gmm.predict_query(zs, ys, zq, 2, 2)
    centre = torch.cat([zs, zq], 1).mean((1, 2), keepdim=True)
    zs_c, zq_c = (zs - centre).reshape(1, 6, 2), (zq - centre).reshape(1, 12, 2)
    mu, var = gmm.semi_supervised_em(zs_c, ys.repeat_interleave(3, 1), zq_c, 2, 2)
    per_sample = torch.softmax(gmm.log_normal_diag(zq_c, mu, var), 1)  # (1, K, Nq * S)
    expected = per_sample.reshape(1, 2, 4, 3).mean(-1).transpose(1, 2)
    np.testing.assert_allclose(probs.numpy(), expected.numpy(), atol=1e-12)


def test_confidence_interval_formula():
    acc = [0.2, 0.4, 0.9, 0.5]
    mean, ci = mean_confidence_interval(acc)
    std = math.sqrt(sum((a - 0.5) ** 2 for a in acc) / 4)  # population std, ddof = 0
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * std / 2)
