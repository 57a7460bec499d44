"""Meta-GMVAE for 28x28 Omniglot images (docs/method.md, "Omniglot").

Shapes: B episodes, M items, S MC samples, D latent size, h hidden channels.
"""
import torch
import torch.nn.functional as F
from torch import nn

from metagmvae.gmvae import SetGMVAE, SetPosterior, full_precision
from metagmvae.runfiles import convert_state_dict
from metagmvae.training import load_model as load_run_model


def conv_block(in_channels, out_channels):
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True)]


class ConvEncoder(nn.Sequential):
    """Four conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool): (N, 1, 28, 28) -> (N, 4h).

    In evaluation mode BatchNorm is a fixed per-channel map y = a x + b, and each block max-pools before
    it, on a quarter of the values.  Max-pooling commutes with ReLU and with y for a >= 0 (both are
    monotone, and so is their rounding); a channel with a < 0 is pooled with its conv weights, bias and
    running mean negated, which is exact in floating point.  So the features are bit for bit those of the
    order above.
    """

    def forward(self, x):
        if self.training:
            return super().forward(x)
        layers = list(self)
        end = len(layers) // 4 * 4  # the blocks, then Flatten
        for conv, norm in zip(layers[0:end:4], layers[1:end:4]):
            x = self.pooled_block(conv, norm, x)
        for layer in layers[end:]:
            x = layer(x)
        return x

    @staticmethod
    def pooled_block(conv, norm, x):
        """conv -> max-pool -> BatchNorm -> ReLU in evaluation mode.  x: (N, C, H, W) -> (N, h, H/2, W/2)."""
        sign = 1 - 2 * (norm.weight < 0).to(norm.weight.dtype)  # (h,): -1 where a < 0
        maps = F.conv2d(x, conv.weight * sign[:, None, None, None], conv.bias * sign, padding=conv.padding)
        pooled = F.max_pool2d(maps, 2, ceil_mode=True)
        return F.relu_(F.batch_norm(pooled, norm.running_mean * sign, norm.running_var, norm.weight * sign,
                                    norm.bias, training=False, eps=norm.eps))


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d that adds its bias to the convolution's output in place: the same parameters and,
    in float32 and float64, the same values bit for bit (under bf16 autocast the sum is rounded once more).
    On CPU oneDNN computes the bias gradient of a transposed convolution slower than its weight gradient; as
    a broadcast add, the bias gets its gradient from torch's sum over (N, H, W), and the Omniglot decoder's
    forward and backward take about a quarter less time (docs/performance.md, "Part 2")."""

    def forward(self, x):
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        maps = F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)
        return maps.add_(self.bias.view(-1, 1, 1))


def deconv_block(in_channels, out_channels, kernel_size):
    return [ConvTranspose2d(in_channels, out_channels, kernel_size, stride=2, padding=1),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class OmniglotGMVAE(SetGMVAE):
    """Conv encoder (28 -> 14 -> 7 -> 4 -> 2, 4h features), set posterior, MLP + transposed-conv decoder
    with a Bernoulli likelihood.  With h = D = 64 it has 988,929 parameters, as the reference."""

    def __init__(self, hidden_size=64, latent_size=64, num_heads=4):
        super().__init__()
        h = hidden_size
        self.config = {"hidden_size": hidden_size, "latent_size": latent_size, "num_heads": num_heads}
        self.feature_size = 4 * h  # h channels x 2 x 2
        self.encoder = ConvEncoder(*conv_block(1, h), *conv_block(h, h), *conv_block(h, h), *conv_block(h, h),
                                   nn.Flatten())
        self.posterior = SetPosterior(self.feature_size, latent_size, num_heads)
        self.latent_to_feature = nn.Sequential(
            nn.Linear(latent_size, self.feature_size), nn.ELU(),
            nn.Linear(self.feature_size, self.feature_size), nn.ELU(),
            nn.Linear(self.feature_size, self.feature_size), nn.ELU())
        self.decoder = nn.Sequential(
            *deconv_block(h, h, 4),   # 2 -> 4
            *deconv_block(h, h, 3),   # 4 -> 7
            *deconv_block(h, h, 4),   # 7 -> 14
            ConvTranspose2d(h, 1, 4, stride=2, padding=1))  # 14 -> 28, Bernoulli logits
        self.hidden_size = h
        # Channels-last convolutions are ~1.3x faster on CPU (oneDNN); the math is unchanged.
        self.to(memory_format=torch.channels_last)

    def decode(self, z):
        """Bernoulli logits.  z: (..., D) -> (..., 1, 28, 28)."""
        features = self.latent_to_feature(z.reshape(-1, z.shape[-1]))
        maps = features.view(-1, self.hidden_size, 2, 2).contiguous(memory_format=torch.channels_last)
        logits = self.decoder(maps)
        return logits.view(*z.shape[:-1], *logits.shape[1:])

    def reconstruction_loss(self, x, z):
        """Bernoulli negative log-likelihood summed over pixels, items and MC samples.

        x: (B, M, 1, 28, 28) in [0, 1], z: (B, M, S, D).  BCE(x, sigmoid(l)) = softplus(l) - x l;
        the target is broadcast over S rather than repeated, and x l summed over S first.
        """
        logits = full_precision(self.decode(z))  # (B, M, S, 1, 28, 28)
        return F.softplus(logits).sum() - (x * logits.sum(2)).sum()


MODEL_NAME = "Omniglot"  # in checkpoints and their error messages
# A training step holds about this many float32 values per decoded image, channel and pixel of the decoder's
# 14 x 14 layer, its largest (activations and their gradients); measured 5.6 at the 5-way defaults
# (docs/performance.md: a 6.66 GiB peak for 25,600 images at h = 64)
DECODER_FLOATS_PER_UNIT = 5


def training_step_bytes(images, hidden_size):
    """A lower bound of the memory of a training step that decodes `images` images (B x M x S) at hidden
    size h: DECODER_FLOATS_PER_UNIT float32 values per image, channel and pixel of the 14 x 14 layer."""
    return 4 * DECODER_FLOATS_PER_UNIT * images * hidden_size * 14 * 14


def load_model(path, device):
    """An OmniglotGMVAE from our checkpoint or the authors' (rank 0 reads the file)."""
    return load_run_model(path, OmniglotGMVAE, convert_reference_state_dict, MODEL_NAME, device)


# The authors' checkpoints name the same modules differently (tests/data/reference_checkpoint_keys.txt).
REFERENCE_PREFIXES = {"encoder.encoder.": "encoder.", "q_z_given_x_net.": "posterior.",
                      "proj.": "latent_to_feature.", "decoder.decoder.": "decoder."}


def convert_reference_state_dict(state_dict):
    """Map an authors' state_dict to ours; returns (state_dict, model constructor arguments)."""
    converted = convert_state_dict(state_dict, REFERENCE_PREFIXES)
    config = {"hidden_size": converted["encoder.0.weight"].shape[0],
              "latent_size": converted["posterior.2.weight"].shape[0] // 2}
    return converted, config
