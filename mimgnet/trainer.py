"""The Mini-ImageNet experiment: Meta-GMVAE on SimCLR features, selected by validation at --shot.
The loop itself is shared: metagmvae/experiment.py and metagmvae/training.py."""
from metagmvae.baselines import logistic_regression_accuracies, nearest_class_mean_accuracies
from metagmvae.experiment import Experiment

from .dataset import load_features
from .model import FeatureGMVAE, convert_reference_state_dict

MIMGNET = Experiment(
    name="Mini-ImageNet",
    model_class=FeatureGMVAE,
    model_config=lambda args, data: {"feature_size": data["train"].shape[-1], "latent_size": args.latent_size},
    load_data=lambda args, splits: load_features(args.data_dir, splits),
    convert_reference=convert_reference_state_dict,
    # The reference keeps one checkpoint, the best validation accuracy at --shot, and tests it at every shot.
    selection_shots=lambda args: [args.shot],
    checkpoint_for_test_shot=lambda args, shot: args.shot,
    baselines={"feature_nearest_class_mean": nearest_class_mean_accuracies,
               "feature_logistic_regression": logistic_regression_accuracies},
)
