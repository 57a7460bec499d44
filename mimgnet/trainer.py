"""The Mini-ImageNet experiment, top to bottom: SimCLR features -> model and Adam -> meta-training with
validation at --shot and checkpoints -> test of the selected checkpoint at every --eval-shots beside two
feature baselines -> results.json.

`args` is the parsed command line of mimgnet/main.py (the reference's flag names).  Under torchrun each
process trains on its share of a step's episodes and evaluates its share of the evaluation episodes;
rank 0 alone writes files and prints (metagmvae/distributed.py).
"""
import torch

from metagmvae import distributed
from metagmvae.cli import (RESUME_INVARIANT_FLAGS, check_batches_fit, check_latents_fit, evaluation_config,
                           take_checkpoint_sizes)
from metagmvae.episodes import check_episodes_fit, make_eval_sets
from metagmvae.evaluation import logistic_regression_accuracies, nearest_class_mean_accuracies, with_baselines
from metagmvae.runfiles import new_model
from metagmvae.training import (Objective, check_not_trained_on, draw_training_sets, evaluate_checkpoint, format_row,
                                run_config, run_folder, save_after_validation, save_results, saved_run_config,
                                selected_checkpoint, start_run, step_progress, test_checkpoints, train_step, validate,
                                validation_due, validation_episodes)

from .dataset import features_encoder, load_features, load_test_split, split_features
from .model import FEATURES_ENCODER, MODEL_NAME, FeatureGMVAE, check_feature_size, check_same_encoder, load_model


BASELINES = {"feature_nearest_class_mean": nearest_class_mean_accuracies,
             "feature_logistic_regression": logistic_regression_accuracies}


def evaluate(args, device):
    """--eval-only: test --checkpoint (ours or the authors') at every --eval-shots; returns the results."""
    test = load_test_split(args.data_dir)
    check_batches_fit(args, test.shape[-1])
    model = load_model(args.checkpoint, device)
    take_checkpoint_sizes(args, {"latent_size": model.config["latent_size"]}, args.checkpoint)
    check_latents_fit(args)
    check_feature_size(model, test.shape[-1], args.checkpoint, source=f"--data-dir {args.data_dir}",
                       remedy="pass the features the model was trained on")
    check_same_encoder(args.checkpoint, features_encoder(args.data_dir), f"--data-dir {args.data_dir}",
                       remedy="pass the features the model was trained on")
    # then its training features, of the same encoder, can be compared with these
    check_not_trained_on(args.checkpoint, "test", test, args.data_dir, split_features, "--eval-only")
    results = evaluate_checkpoint(model, args.checkpoint, test, BASELINES, args.eval_way,
                                  args.eval_shots, args.query, args.eval_episodes, args.seed, args.test_mc_sample_size,
                                  args.semisupervised_em_iters, args.batch_size, device, args.amp)
    return {**results, "config": evaluation_config(args, saved_run_config(args.checkpoint))}


def check_run_fits(args, features):
    """Refuse, before the first step and the first write, a run that could not finish: batches of this many
    features in memory, validation episodes (val-acc), the test episodes and the batch split over the
    processes.  features: {split: (C, I, F)}."""
    check_batches_fit(args, features["train"].shape[-1])
    if args.select_by == "val-acc":  # the only mode that reads validation labels
        check_episodes_fit("val", features["val"], args.eval_way, args.query, [args.shot], args.eval_episodes)
    check_episodes_fit("test", features["test"], args.eval_way, args.query, args.eval_shots, args.eval_episodes)
    distributed.check_batch_divides(args.batch_size)


def train(args, device):
    """Meta-train, keep the checkpoint --select-by picks, test it; returns results.json's content."""
    # Data: (C, I, F) features per split; training features pooled without labels.
    features = load_features(args.data_dir)
    check_run_fits(args, features)
    # the flags, the data's sha256 (--resume refuses other data) and the encoder's (--eval-only, evaluate.py
    # and cluster.py refuse another encoder's features)
    config = {**run_config(args, features), FEATURES_ENCODER: features_encoder(args.data_dir)}
    train_pool = features["train"].flatten(0, 1)  # (C * I, F)

    # The reference keeps one checkpoint, the best validation accuracy at --shot, and tests it at every shot.
    val = validation_episodes(args.select_by, features["val"], [args.shot], args.eval_way, args.query,
                              args.eval_episodes, args.val_elbo_sets, args.sample_size, args.seed)

    model = new_model(FeatureGMVAE, {"feature_size": train_pool.shape[-1], "latent_size": args.latent_size},
                      f"features of size {train_pool.shape[-1]} and --latent-size {args.latent_size}",
                      MODEL_NAME).to(device)
    # L2 added to the gradient (torch Adam's weight_decay), as the reference; not AdamW.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    objective = Objective(args.way, args.train_mc_sample_size, args.unsupervised_em_iters, args.fix_pi)

    with run_folder(args.save_dir, MODEL_NAME, args.resume) as run:  # held; Ctrl-C names the checkpoint
        log = start_run(run, model, optimizer, config, args.resume, args.overwrite,
                        RESUME_INVARIANT_FLAGS + ("shot",), MODEL_NAME)  # --shot selects the checkpoint
        trained = distributed.wrap_for_training(model, device)  # DDP under torchrun, `model` itself otherwise
        model.train()
        with step_progress(log, args.train_iters) as progress:
            for step in progress:
                x, rng = draw_training_sets(train_pool, step, args.batch_size, args.sample_size, args.seed)
                log.add(step + 1, train_step(trained, optimizer, x.to(device, non_blocking=True), rng, objective,
                                             step + 1, args.amp, args.grad_clip))
                if validation_due(step + 1, args.freq_iters, args.train_iters):
                    scores, fields = validate(model, val, objective, args.test_mc_sample_size,
                                              args.semisupervised_em_iters, args.batch_size, args.seed, device,
                                              args.amp)
                    row = log.validation(scores, fields)
                    if distributed.is_main():
                        save_after_validation(run, log, log.checkpoint(model, optimizer, config))
                        progress.write(format_row(row))
                    log.restart_clock()

        # Test: the selected checkpoint at every shot, beside the baselines on the same episodes.
        test_sets = make_eval_sets(features["test"], args.eval_way, args.eval_shots, args.query, args.eval_episodes,
                                   args.seed, "test")
        name = selected_checkpoint(args.select_by, args.shot)  # one checkpoint, tested at every shot
        test = test_checkpoints(model, test_sets, run, dict.fromkeys(test_sets, name), args.test_mc_sample_size,
                                args.semisupervised_em_iters, args.batch_size, device, args.amp)
        return save_results(run, with_baselines(test, test_sets, BASELINES, select_by=args.select_by,
                                                train_iters=args.train_iters, wall_time_s=log.wall_time,
                                                config=config))
