"""The Omniglot experiment, top to bottom: data -> model and Adam -> meta-training with validation and
checkpoints -> test of the selected checkpoints beside a pixel baseline -> results.json.

`args` is the parsed command line of omniglot/main.py (the reference's flag names).  Under torchrun each
process trains on its share of a step's episodes and evaluates its share of the evaluation episodes;
rank 0 alone writes files and prints (metagmvae/distributed.py).
"""
import torch

from metagmvae import distributed
from metagmvae.cli import RESUME_INVARIANT_FLAGS, check_latents_fit, evaluation_config, take_checkpoint_sizes
from metagmvae.episodes import check_episodes_fit, make_eval_sets
from metagmvae.evaluation import nearest_class_mean_accuracies, with_baselines
from metagmvae.folders import FIGURES
from metagmvae.runfiles import check_fits_in_memory, new_model
from metagmvae.training import (Objective, check_not_trained_on, draw_training_sets, evaluate_checkpoint, format_row,
                                run_config, run_folder, save_after_validation, save_results, saved_run_config,
                                selected_checkpoint, start_run, step_progress, test_checkpoints, train_step, validate,
                                validation_due, validation_episodes)

from .dataset import load_omniglot, load_split, load_test_split
from .figures import check_run_figures, run_metrics, write_run_figures
from .model import MODEL_NAME, OmniglotGMVAE, load_model, training_step_bytes


BASELINES = {"pixel_nearest_class_mean": nearest_class_mean_accuracies}


def evaluate(args, device):
    """--eval-only: test --checkpoint (ours or the authors') at every --eval-shots; returns the results."""
    test = load_test_split(args.data_dir)
    check_not_trained_on(args.checkpoint, "test", test, args.data_dir, load_split, "--eval-only")
    model = load_model(args.checkpoint, device)
    take_checkpoint_sizes(args, model.config, args.checkpoint)
    check_latents_fit(args)
    return {**evaluate_checkpoint(model, args.checkpoint, test, BASELINES, args.eval_way, args.eval_shots, args.query,
                                  args.eval_episodes, args.seed, args.test_mc_sample_size,
                                  args.semisupervised_em_iters, args.batch_size, device, args.amp),
            "config": evaluation_config(args, saved_run_config(args.checkpoint))}


def check_run_fits(args, data, device):
    """Refuse, before the first step and the first write, a run that could not finish: a training step beyond
    this machine's memory (on the CPU), validation episodes (val-acc), the figures drawn at each validation, the
    test episodes and the batch split over the processes.  data: {split: (C, I, 1, 28, 28)}."""
    if device.type == "cpu":  # else torch's out-of-memory error says it at the first step
        images = args.batch_size * args.sample_size * args.train_mc_sample_size
        check_fits_in_memory(training_step_bytes(images, args.hidden_size),
                             f"--hidden-size {args.hidden_size} with {images} images decoded a step (--batch-size x "
                             "--sample-size x --train-mc-sample-size): the decoder's activations of one step")
    if args.select_by == "val-acc":  # the only mode that reads validation labels
        check_episodes_fit("val", data["val"], args.eval_way, args.query, args.eval_shots, args.eval_episodes)
    check_run_figures(data, args.way, args.eval_way, args.sample_size, args.query)
    check_episodes_fit("test", data["test"], args.eval_way, args.query, args.eval_shots, args.eval_episodes)
    distributed.check_batch_divides(args.batch_size)


def train(args, device):
    """Meta-train, keep the checkpoints --select-by picks, test them; returns results.json's content."""
    # Data: training images pooled without labels; labeled validation and test episodes.
    data = load_omniglot(args.data_dir)
    check_run_fits(args, data, device)
    config = run_config(args, data)  # the flags and the data's sha256: --resume refuses other data
    train_pool = data["train"].flatten(0, 1)  # (C * I, 1, 28, 28)

    # The reference validates at every test shot and tests each shot with its own best checkpoint.
    val = validation_episodes(args.select_by, data["val"], args.eval_shots, args.eval_way, args.query,
                              args.eval_episodes, args.val_elbo_sets, args.sample_size, args.seed)

    model = new_model(OmniglotGMVAE, {"hidden_size": args.hidden_size, "latent_size": args.latent_size},
                      f"--hidden-size {args.hidden_size} --latent-size {args.latent_size}", MODEL_NAME).to(device)
    # L2 added to the gradient (torch Adam's weight_decay), as the reference; not AdamW.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    objective = Objective(args.way, args.train_mc_sample_size, args.unsupervised_em_iters, args.fix_pi)

    with run_folder(args.save_dir, MODEL_NAME, args.resume) as run:  # held; Ctrl-C names the checkpoint
        log = start_run(run, model, optimizer, config, args.resume, args.overwrite,
                        RESUME_INVARIANT_FLAGS + ("hidden_size",), MODEL_NAME)
        trained = distributed.wrap_for_training(model, device)  # DDP under torchrun, `model` itself otherwise
        model.train()
        with step_progress(log, args.train_iters) as progress:
            for step in progress:
                x, rng = draw_training_sets(train_pool, step, args.batch_size, args.sample_size, args.seed)
                stats = train_step(trained, optimizer, x.to(device, non_blocking=True), rng, objective, step + 1,
                                   args.amp, args.grad_clip)
                log.add(step + 1, stats)
                progress.set_postfix(rec=f"{stats['rec']:.2f}", kl=f"{stats['kl']:.2f}")
                if not validation_due(step + 1, args.freq_iters, args.train_iters):
                    continue
                row = log.validation(*validate(model, val, objective, args.test_mc_sample_size,
                                               args.semisupervised_em_iters, args.batch_size, args.seed, device,
                                               args.amp))
                if distributed.is_main():
                    save_after_validation(run, log, log.checkpoint(model, optimizer, config))
                    progress.write(format_row(row))
                    write_run_figures(model, data, run.folder / FIGURES, run_metrics(run), args.way, args.eval_way,
                                      args.sample_size, args.query, args.unsupervised_em_iters,
                                      args.semisupervised_em_iters, args.test_mc_sample_size, args.seed)
                log.restart_clock()

        # Test: each shot with the checkpoint selected for it, beside the baseline on the same episodes.
        test_sets = make_eval_sets(data["test"], args.eval_way, args.eval_shots, args.query, args.eval_episodes,
                                   args.seed, "test")
        names = {shot: selected_checkpoint(args.select_by, shot) for shot in args.eval_shots}
        test = test_checkpoints(model, test_sets, run, names, args.test_mc_sample_size, args.semisupervised_em_iters,
                                args.batch_size, device, args.amp)
        return save_results(run, with_baselines(test, test_sets, BASELINES, select_by=args.select_by,
                                                train_iters=args.train_iters, wall_time_s=log.wall_time,
                                                config=config))
