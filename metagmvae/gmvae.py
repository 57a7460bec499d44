"""The dataset-independent part of Meta-GMVAE: set-level posterior, EM prior, loss and prediction.

Shapes: B episodes, M items per episode, S MC samples per item, K mixture components, D latent size.
A dataset model subclasses `SetGMVAE` and supplies `encoder` (items -> F features),
`decode(z)` and `reconstruction_loss(x, z)`.
"""
import torch
from torch import nn

from .gmm import LOG_2PI, episode_prior_log_prob, predict_query
from .runfiles import UserError
from .set_transformer import SAB

TOLD_APART = 1e-6  # least spread of the items' posterior means, as a fraction of the posterior std


def autocast(device, enabled):
    """bf16 autocast for the networks when `enabled` (--amp); a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def full_precision(t):
    """t as float32 when --amp made it bfloat16; float32 and float64 tensors unchanged."""
    return t.float() if t.dtype == torch.bfloat16 else t


class ItemsAlike(UserError):
    """The model encodes all items of an episode alike (check_items_told_apart)."""


def check_items_told_apart(mean, logvar):
    """Refuse sets whose items the model does not tell apart: mean, logvar (B, M, D) of an episode whose
    items' posterior means lie, in every latent dimension, within TOLD_APART of the smallest posterior std
    of one another.  Then the MC noise, not the items, decides every prediction or cluster."""
    spread = mean.amax(1) - mean.amin(1)  # (B, D)
    noise = (0.5 * logvar).exp().amin(1)  # (B, D)
    if bool((spread <= TOLD_APART * noise).all(-1).any()):
        raise ItemsAlike("the model encodes all items of an episode alike (their posterior means differ by less "
                         f"than {TOLD_APART:g} of its std), so every prediction would be chance: items that are "
                         "nearly one picture, or weights that send every item to one point (a damaged checkpoint, "
                         "or one trained into a degenerate state)")


class SetPosterior(nn.Sequential):
    """q(z_i | x_i, episode): two SABs over the items of an episode, then a linear map to (mean, logvar).

    (B, M, F) -> (B, M, 2D).
    """

    def __init__(self, feature_size, latent_size, num_heads=4):
        super().__init__(SAB(feature_size, feature_size, num_heads),
                         SAB(feature_size, feature_size, num_heads),
                         nn.Linear(feature_size, 2 * latent_size))


class SetGMVAE(nn.Module):
    """Meta-GMVAE skeleton.  Subclasses set `self.encoder` and `self.posterior` and define
    `decode(z)` and `reconstruction_loss(x, z)`."""

    def posterior_params(self, x, chunk_size=None):
        """x: (B, M, *item_shape) -> mean, logvar: (B, M, D).

        chunk_size: the per-item encoder runs on this many items at a time (None: all B M at once); the
        set-level posterior always sees whole sets.
        """
        B, M = x.shape[:2]
        items = x.flatten(0, 1)
        features = (self.encoder(items) if chunk_size is None
                    else torch.cat([self.encoder(chunk) for chunk in items.split(chunk_size)])).view(B, M, -1)
        return full_precision(self.posterior(features)).chunk(2, dim=-1)

    @staticmethod
    def sample(mean, logvar, num_samples, rng=None):
        """Reparameterised z: (B, M, S, D) and log q(z | x): (B, M, S).

        rng: an EpisodeRandom with one stream per episode, or None for the global RNG.
        """
        shape = (*mean.shape[:2], num_samples, mean.shape[-1])
        eps = torch.randn(shape, dtype=mean.dtype, device=mean.device) if rng is None else rng.randn(*shape).to(mean)
        std = (0.5 * logvar).exp().unsqueeze(2)
        z = mean.unsqueeze(2) + std * eps
        # (z - mean) / std is eps exactly, so log q needs no division.
        log_q = -0.5 * (eps.pow(2) + logvar.unsqueeze(2) + LOG_2PI).sum(-1)
        return z, log_q

    def forward(self, x, num_components, mc_samples, em_iters, fix_pi=False, rng=None):
        """Training objective of one step.  x: (B, M, *item_shape) unlabeled sets; rng: see `sample`
        (it draws the MC noise, then the EM start of each episode).

        Returns a dict of scalars: rec (reconstruction loss / (B M S)), kl (mean of log q - log p),
        loss = rec + kl.
        """
        B, M = x.shape[:2]
        mean, logvar = self.posterior_params(x)
        z, log_q = self.sample(mean, logvar, mc_samples, rng)
        with torch.autocast(z.device.type, enabled=False):  # EM and densities in float32, also under --amp
            log_p = episode_prior_log_prob(z.flatten(1, 2), num_components, em_iters, fix_pi, rng)
        kl = (log_q.flatten(1) - log_p).mean()
        rec = self.reconstruction_loss(x, z) / (B * M * mc_samples)
        return {"loss": rec + kl, "rec": rec, "kl": kl}

    @torch.no_grad()
    def predict(self, support, y_support, query, num_classes, mc_samples, em_iters, rng=None):
        """Class probabilities of the queries of B episodes, support and query encoded as one set.

        support: (B, Ns, *item_shape), y_support: (B, Ns), query: (B, Nq, *item_shape) -> (B, Nq, K).
        rng: draws the MC noise (see `sample`).
        """
        Ns = support.shape[1]
        mean, logvar = self.posterior_params(torch.cat([support, query], dim=1))
        check_items_told_apart(mean, logvar)
        z, _ = self.sample(mean, logvar, mc_samples, rng)
        with torch.autocast(z.device.type, enabled=False):
            return predict_query(z[:, :Ns], y_support, z[:, Ns:], num_classes, em_iters)


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())

