"""The Omniglot model: architecture, the fast loss against the formulas, and the authors' checkpoints."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metagmvae.gmvae import count_parameters
from metagmvae.set_transformer import MAB
from omniglot.model import REFERENCE_PREFIXES, ConvTranspose2d, OmniglotGMVAE
from omniglot.model import load_model

from .conftest import reference_key_shapes, to_reference_state_dict


def test_parameter_count_matches_reference():
    model = OmniglotGMVAE()
    assert count_parameters(model) == 988_929
    assert count_parameters(model.encoder) == 111_936
    assert count_parameters(model.posterior) == 559_232
    assert count_parameters(model.latent_to_feature) == 148_224
    assert count_parameters(model.decoder) == 169_537


def test_shapes():
    model = OmniglotGMVAE(hidden_size=8, latent_size=5)
    mean, logvar = model.posterior_params(torch.rand(2, 7, 1, 28, 28))
    assert mean.shape == logvar.shape == (2, 7, 5)
    assert model.decode(torch.randn(2, 7, 3, 5)).shape == (2, 7, 3, 1, 28, 28)


@pytest.mark.parametrize("dtype, amp", [(torch.float32, False), (torch.float64, False), (torch.float32, True)])
def test_eval_encoder_pools_first_with_the_same_features(dtype, amp):
    """Evaluation mode pools before BatchNorm and ReLU: bit for bit the layer-by-layer features, also for
    channels whose BatchNorm scale is negative (a third here) or zero."""
    torch.manual_seed(0)
    model = OmniglotGMVAE(hidden_size=16, latent_size=8).to(dtype).eval()
    for norm in (m for m in model.encoder if isinstance(m, torch.nn.BatchNorm2d)):
        norm.weight.data.normal_().sub_(0.4)
        norm.weight.data[0] = 0.0
        norm.bias.data.normal_()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.1, 2.0)
    assert all((m.weight < 0).any() for m in model.encoder if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.rand(37, 1, 28, 28, dtype=dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        features = model.encoder(x)
        layer_by_layer = torch.nn.Sequential.forward(model.encoder, x)
        first_blocks = model.encoder[:8]  # a slice: the maps of two blocks, unflattened
        assert torch.equal(first_blocks(x), torch.nn.Sequential.forward(first_blocks, x))
    assert features.shape == (x.shape[0], 64) and features.dtype == layer_by_layer.dtype
    assert features.abs().sum() > 0
    assert torch.equal(features, layer_by_layer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decoder_convolution_is_torchs_with_the_bias_added_after(dtype):
    """The decoder's ConvTranspose2d gives torch's output bit for bit and its gradients up to rounding."""
    torch.manual_seed(0)
    ours = ConvTranspose2d(6, 4, 4, stride=2, padding=1).to(dtype, memory_format=torch.channels_last)
    theirs = torch.nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1).to(dtype, memory_format=torch.channels_last)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 6, 7, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(5, 4, 14, 14, dtype=dtype)
    grads = []
    for conv in (ours, theirs):
        x_leaf = x.clone().requires_grad_()
        out = conv(x_leaf)
        out.backward(upstream)
        grads.append((out.detach(), x_leaf.grad, conv.weight.grad, conv.bias.grad))
    assert ours.bias.abs().min() > 0
    assert torch.equal(grads[0][0], grads[1][0])
    for mine, torchs in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(mine, torchs)


def naive_mab(mab, Q, K, heads):
    """The Set Transformer authors' formulation: heads concatenated along the batch."""
    q, k, v = mab.fc_q(Q), mab.fc_k(K), mab.fc_v(K)
    split = q.shape[-1] // heads
    q_, k_, v_ = (torch.cat(t.split(split, 2), 0) for t in (q, k, v))
    attn = torch.softmax(q_ @ k_.transpose(1, 2) / math.sqrt(q.shape[-1]), 2)
    out = torch.cat((q_ + attn @ v_).split(Q.shape[0], 0), 2)
    return out + F.relu(mab.fc_o(out))


def test_mab_matches_reference_formulation():
    torch.manual_seed(0)
    mab = MAB(16, 16, 32, 4)
    Q, K = torch.randn(3, 5, 16), torch.randn(3, 9, 16)
    torch.testing.assert_close(mab(Q, K), naive_mab(mab, Q, K, 4), atol=1e-5, rtol=1e-5)


def naive_loss(model, x, K, S, em_iters):
    """The loss of docs/method.md written plainly: repeated targets, Normal log-densities, distances by subtraction."""
    B, M = x.shape[:2]
    mean, logvar = model.posterior_params(x)
    eps = torch.randn(B, M, S, mean.shape[-1])
    std = torch.exp(0.5 * logvar).unsqueeze(2)
    z = mean.unsqueeze(2) + std * eps
    log_q = torch.distributions.Normal(mean.unsqueeze(2), std).log_prob(z).sum(-1)
    points = z.reshape(B, M * S, -1).detach()
    pick = torch.rand(B, M * S).argsort(1)[:, :K]
    mu = torch.stack([points[b, pick[b]] for b in range(B)])
    pi = torch.full((B, K), 1.0 / K)
    unit = torch.distributions.Normal(0.0, 1.0)
    for _ in range(em_iters):
        log_r = pi.log().unsqueeze(1) + unit.log_prob(points.unsqueeze(2) - mu.unsqueeze(1)).sum(-1)
        r = torch.softmax(log_r, -1)
        pi = r.sum(1) / r.sum((1, 2)).unsqueeze(-1)
        mu = (r.unsqueeze(-1) * points.unsqueeze(2)).sum(1) / r.sum(1).unsqueeze(-1)
    z_flat = z.reshape(B, M * S, -1)
    log_p = torch.logsumexp(pi.log().unsqueeze(1) + unit.log_prob(z_flat.unsqueeze(2) - mu.unsqueeze(1)).sum(-1), -1)
    kl = (log_q.reshape(B, M * S) - log_p).mean()
    h = model.latent_to_feature(z.reshape(-1, z.shape[-1])).view(-1, model.hidden_size, 2, 2)
    recon = torch.sigmoid(model.decoder(h)).view(B, M, S, 1, 28, 28)
    target = x.unsqueeze(2).repeat(1, 1, S, 1, 1, 1)
    rec = F.binary_cross_entropy(recon, target, reduction="sum") / (B * M * S)
    return rec, kl


def test_fast_loss_and_gradients_equal_the_formulas():
    torch.manual_seed(1)
    model = OmniglotGMVAE(hidden_size=16, latent_size=6)
    x = (torch.rand(2, 10, 1, 28, 28) > 0.7).float()

    torch.manual_seed(7)
    out = model(x, num_components=3, mc_samples=4, em_iters=5)
    fast_grads = torch.autograd.grad(out["loss"], list(model.parameters()))

    torch.manual_seed(7)
    rec, kl = naive_loss(model, x, K=3, S=4, em_iters=5)
    naive_grads = torch.autograd.grad(rec + kl, list(model.parameters()))

    torch.testing.assert_close(out["rec"], rec, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["kl"], kl, rtol=1e-4, atol=1e-4)
    for fast, naive in zip(fast_grads, naive_grads):
        torch.testing.assert_close(fast, naive, rtol=1e-3, atol=1e-4)


def test_reference_names_and_shapes_match_the_published_key_list():
    ours = {k: tuple(v.shape) for k, v in to_reference_state_dict(OmniglotGMVAE(), REFERENCE_PREFIXES).items()}
    assert ours == reference_key_shapes("omniglot")


def test_authors_checkpoint_gives_identical_predictions(tmp_path):
    torch.manual_seed(2)
    model = OmniglotGMVAE(hidden_size=16, latent_size=16)
    model.train()
    model(torch.rand(2, 10, 1, 28, 28), 2, 2, 2)  # move BatchNorm running statistics off their init
    model.eval()
    path = tmp_path / "1shot_best.pth"
    torch.save({"state_dict": to_reference_state_dict(model, REFERENCE_PREFIXES), "accuracy": np.float64(0.9), "epoch": 3}, path)
    loaded = load_model(path, torch.device("cpu"))
    loaded.eval()
    support, query = torch.rand(2, 5, 1, 28, 28), torch.rand(2, 10, 1, 28, 28)
    labels = torch.arange(5).expand(2, 5)
    torch.manual_seed(3)
    expected = model.predict(support, labels, query, 5, 4, 3)
    torch.manual_seed(3)
    assert torch.equal(loaded.predict(support, labels, query, 5, 4, 3), expected)


def test_bf16_autocast_keeps_em_and_losses_float32_and_close():
    """--amp: the networks run in bf16, EM, densities and losses in float32; the loss moves little."""
    torch.manual_seed(4)
    model = OmniglotGMVAE(hidden_size=16, latent_size=6)
    x = (torch.rand(2, 10, 1, 28, 28) > 0.7).float()
    torch.manual_seed(5)
    full = model(x, 3, 4, 5)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = model(x, 3, 4, 5)
    assert all(v.dtype == torch.float32 for v in amp.values())
    torch.testing.assert_close(amp["rec"], full["rec"], rtol=2e-2, atol=0)
    assert abs(amp["kl"] - full["kl"]) < 0.1 * abs(full["kl"]) + 0.5
    amp["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
