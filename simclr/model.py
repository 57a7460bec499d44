"""SimCLR network: the Conv5 encoder whose output is the exported feature, and a projection head.

Shapes: N images, C channels, H x W pixels (84 x 84 for Mini-ImageNet), F = hidden * 2 * 2 features.
"""
import torch.nn as nn
import torch.nn.functional as F

from metagmvae.runfiles import data_sha256

NUM_BLOCKS = 5
ENCODER_DIGEST = "encoder_sha256"  # the features manifest entry that names the encoder (encoder_sha256)


def conv_block(in_channels, out_channels):
    """conv 3x3 (pad 1), BatchNorm, ReLU, max-pool 2 (floor): (N, C, H, W) -> (N, C', H // 2, W // 2)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv5(nn.Module):
    """Five conv blocks (84 -> 42 -> 21 -> 10 -> 5 -> 2), flattened: (N, C, H, W) -> (N, F).

    At hidden_size 64 on 84 x 84 images: F = 64 * 2 * 2 = 256 and 150,144 parameters.
    """

    def __init__(self, in_channels=3, hidden_size=64, image_size=84):
        super().__init__()
        channels = [in_channels] + [hidden_size] * NUM_BLOCKS
        self.blocks = nn.Sequential(*(conv_block(c_in, c_out) for c_in, c_out in zip(channels, channels[1:])))
        side = image_size // 2 ** NUM_BLOCKS  # floor-halving five times is one floor division
        self.feature_size = hidden_size * side * side

    def forward(self, images):
        """(N, C, H, W) -> (N, F)."""
        return self.blocks(images).flatten(1)


class SimCLR(nn.Module):
    """Conv5 encoder + projection head F -> projection_hidden -> ReLU -> projection_size.

    forward gives the L2-normalised embeddings used by NT-Xent; `encoder(images)` gives the (N, F)
    features that are exported for Meta-GMVAE.
    """

    def __init__(self, in_channels=3, hidden_size=64, image_size=84, projection_hidden=256,
                 projection_size=128):
        super().__init__()
        self.encoder = Conv5(in_channels, hidden_size, image_size)
        self.head = nn.Sequential(
            nn.Linear(self.encoder.feature_size, projection_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(projection_hidden, projection_size),
        )

    def forward(self, images):
        """(N, C, H, W) -> unit-norm embeddings (N, projection_size)."""
        return F.normalize(self.head(self.encoder(images)), dim=-1)


def encoder_sha256(model):
    """Hex sha256 of a SimCLR model's encoder weights (parameters and BatchNorm buffers): which network's
    features these are, as the features manifest records it (ENCODER_DIGEST)."""
    return data_sha256({name: tensor.detach().cpu() for name, tensor in model.encoder.state_dict().items()})
