"""Meta-GMVAE on F-dimensional SimCLR features of Mini-ImageNet (docs/method.md, "Mini-ImageNet").

Shapes: B episodes, M items, S MC samples, F feature size, D latent size.
"""
from torch import nn

from metagmvae.gmvae import SetGMVAE, SetPosterior, full_precision
from metagmvae.runfiles import UserError, convert_state_dict
from metagmvae.training import load_model as load_run_model
from metagmvae.training import saved_run_config


class FeatureGMVAE(SetGMVAE):
    """Set posterior on the features themselves and a ReLU MLP decoder D -> 2F -> 2F -> F with a
    squared-error reconstruction.  With F = 256, D = 32 it has 953,664 parameters, as the reference."""

    def __init__(self, feature_size=256, latent_size=32, num_heads=4):
        super().__init__()
        F = feature_size
        self.config = {"feature_size": feature_size, "latent_size": latent_size, "num_heads": num_heads}
        self.encoder = nn.Identity()  # the items are already SimCLR features
        self.posterior = SetPosterior(F, latent_size, num_heads)
        # ReLU after the last layer too: the features (ReLU outputs) are non-negative.
        self.decoder = nn.Sequential(nn.Linear(latent_size, 2 * F), nn.ReLU(), nn.Linear(2 * F, 2 * F), nn.ReLU(),
                                     nn.Linear(2 * F, F), nn.ReLU())

    def decode(self, z):
        """z: (..., D) -> reconstructed features (..., F)."""
        return self.decoder(z)

    def reconstruction_loss(self, x, z):
        """Squared error summed over feature dims, items and MC samples.  x: (B, M, F), z: (B, M, S, D)."""
        return (full_precision(self.decode(z)) - x.unsqueeze(2)).pow(2).sum()


MODEL_NAME = "Mini-ImageNet"  # in checkpoints and their error messages
FEATURES_ENCODER = "features_encoder_sha256"  # the run config entry: the encoder of the features it trained on


def check_feature_size(model, feature_size, checkpoint_path, source, remedy):
    """Refuse a model whose input size is not feature_size, that of the features `source` (the flag and the
    path they come from) gives, saying `remedy`: evaluating it would fail at the first layer."""
    if model.config["feature_size"] != feature_size:
        raise UserError(f"--checkpoint {checkpoint_path} takes {model.config['feature_size']} features but {source} "
                        f"gives {feature_size}; {remedy}")


def check_same_encoder(checkpoint, encoder_digest, source, remedy):
    """Refuse features of an encoder (encoder_digest: simclr.model.encoder_sha256, None when unknown) other
    than the one whose features the model of `checkpoint` trained on (its run config's FEATURES_ENCODER;
    a checkpoint without one, the authors' or one trained on features of other code, is not checked).
    Features of two encoders differ in every coordinate, so accuracies on the other's would mean nothing,
    however alike their scales.  source: what gave the features, for the message ("--encoder x.pt")."""
    trained_on = saved_run_config(checkpoint).get(FEATURES_ENCODER)
    if None not in (trained_on, encoder_digest) and trained_on != encoder_digest:
        raise UserError(f"{checkpoint} was trained on the features of another SimCLR encoder than {source} "
                        f"(sha256 of the encoder's weights {str(trained_on)[:12]}..., {source}'s "
                        f"{encoder_digest[:12]}...): its predictions on these features would mean nothing; {remedy}")


def load_model(path, device):
    """A FeatureGMVAE from our checkpoint or the authors' (rank 0 reads the file)."""
    return load_run_model(path, FeatureGMVAE, convert_reference_state_dict, MODEL_NAME, device)


# The authors' checkpoints name the same modules differently (tests/data/reference_checkpoint_keys.txt).
REFERENCE_PREFIXES = {"q_z_given_x_net.": "posterior.", "proj.": "decoder."}


def convert_reference_state_dict(state_dict):
    """Map an authors' state_dict to ours; returns (state_dict, model constructor arguments)."""
    converted = convert_state_dict(state_dict, REFERENCE_PREFIXES)
    config = {"feature_size": converted["posterior.2.weight"].shape[1],
              "latent_size": converted["posterior.2.weight"].shape[0] // 2}
    return converted, config
