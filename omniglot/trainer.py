"""The Omniglot experiment: its model, data and model-selection rule (one best checkpoint per shot).
The loop itself is shared: metagmvae/experiment.py and metagmvae/training.py."""
from metagmvae.baselines import nearest_class_mean_accuracies
from metagmvae.experiment import RESUME_INVARIANT_FLAGS, Experiment

from .dataset import load_omniglot
from .figures import write_run_figures
from .model import OmniglotGMVAE, convert_reference_state_dict

OMNIGLOT = Experiment(
    name="Omniglot",
    model_class=OmniglotGMVAE,
    model_config=lambda args, data: {"hidden_size": args.hidden_size, "latent_size": args.latent_size},
    load_data=lambda args, splits: load_omniglot(args.data_dir, splits),
    convert_reference=convert_reference_state_dict,
    # The reference validates every test shot and tests each with its own best checkpoint.
    selection_shots=lambda args: args.eval_shots,
    checkpoint_for_test_shot=lambda args, shot: shot,
    resume_invariant_flags=RESUME_INVARIANT_FLAGS + ("hidden_size",),
    baselines={"pixel_nearest_class_mean": nearest_class_mean_accuracies},
    write_figures=write_run_figures,
)
