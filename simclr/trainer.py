"""SimCLR pre-training on the Mini-ImageNet train split, and export of the Conv5 encoder features.

Shapes: B images per batch, N images of a split, F = hidden * 2 * 2 features (256 at hidden 64).
`args` is the parsed command line of simclr/main.py.  Under torchrun each process takes b = B / processes
images of every batch and NT-Xent uses the negatives of all processes (distributed.py); rank 0 writes.
"""
import math
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from metagmvae import distributed
from metagmvae.cli import take_checkpoint_sizes
from metagmvae.folders import OutputFolder, canonical_json, check_as_written
from metagmvae.runfiles import (DATA_FOLDER, SPLIT_DIGESTS, UserError, build_model, check_distinct_classes,
                                check_finite_result, data_sha256, load_checkpoint, rng_state)
from metagmvae.training import (TrainingDiverged, prepare_folder, read_resume_state, restore_training, run_config,
                                run_folder)

from .augment import eval_transform, two_views
from .data import (SPLITS, check_distinct_image_classes, check_full_range, check_split, load_image_array, load_split,
                   thumbnails)
from .loss import nt_xent
from .model import ENCODER_DIGEST, SimCLR, encoder_sha256

MODEL_NAME = "SimCLR"
IMAGE_SIZE = 84
DEBUG_BATCHES = 2  # --debug: batches per epoch at most
# Flags that define the model, the data order or the schedule: a resumed run must keep them.
RESUME_INVARIANT_FLAGS = ("hidden_size", "batch_size", "train_epochs", "lr", "temperature", "seed", "debug")
CHECKPOINT_KEYS = ("model", "model_config", "optimizer", "scheduler", "epoch", "rng", "shuffle_rng", "augment_rng",
                   "config", "wall_time_s")
FEATURES_KIND = "SimCLR features"  # the kind of folder --feature-save-dir is, in its record
FEATURES_MANIFEST = "manifest.json"


def feature_names(split):
    """The names of a split's features and labels in the feature folder."""
    return f"{split}_features.npy", f"{split}_labels.npy"


FEATURE_FILES = (FEATURES_MANIFEST, *(name for split in SPLITS for name in feature_names(split)))
EXPORT_TRANSFORM = "simclr.augment.eval_transform: resize the smaller edge to 84, ImageNet mean/std normalisation"


def make_training(args, device):
    """Model, Adam and a cosine decay of the learning rate over the whole run (stepped once per epoch).

    The reference restarts its cosine every 150 epochs by accident (docs/differences.md); we decay once.
    """
    model = SimCLR(**model_config(args)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.train_epochs)
    return model, optimizer, scheduler


def model_config(args):
    """SimCLR's constructor arguments, stored in checkpoints to rebuild the model."""
    return {"hidden_size": args.hidden_size, "image_size": IMAGE_SIZE}


def batches_per_epoch(num_images, args):
    """Full batches of one epoch (the last incomplete one is dropped); at most DEBUG_BATCHES with --debug."""
    batches = num_images // args.batch_size
    if batches == 0:
        raise UserError(f"the train split holds {num_images} images, fewer than one batch of --batch-size "
                        f"{args.batch_size}; pass a smaller --batch-size")
    return min(batches, DEBUG_BATCHES) if args.debug else batches


def train_step(model, optimizer, x, augment_rng, args, share):
    """One NT-Xent update on x: (b, 3, 84, 84) uint8, this process's rows (share) of the batch.
    Returns the loss of the whole batch as a float.

    Both views go through one forward pass, so BatchNorm normalises over all 2B views; the embeddings
    of every process are gathered (with their gradient), so each anchor has the 2B - 2 negatives of the
    whole batch, as in one process.
    """
    view1, view2 = two_views(x, augment_rng, share=share)  # each (b, 3, 84, 84)
    z1, z2 = model(torch.cat([view1, view2])).chunk(2)  # each (b, 128)
    loss = nt_xent(distributed.all_gather_with_grad(z1), distributed.all_gather_with_grad(z2),
                   temperature=args.temperature, rows=share.rows)
    batch_loss = distributed.mean_over_processes(loss.unsqueeze(0)).item()
    if not math.isfinite(batch_loss):  # the same on every process, so all of them stop
        raise TrainingDiverged(f"loss is {batch_loss}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return batch_loss


def train_epoch(model, optimizer, images, batches, rngs, args, device, epoch):
    """One pass over `batches` shuffled batches of images (N, 3, 84, 84) uint8; returns the mean loss."""
    shuffle_rng, augment_rng = rngs
    model.train()
    order = torch.randperm(len(images), generator=shuffle_rng)
    share = distributed.share(args.batch_size)
    total = 0.0
    with tqdm(range(batches), desc=f"epoch {epoch + 1}/{args.train_epochs}", dynamic_ncols=True,
              disable=not distributed.is_main()) as progress:
        for b in progress:
            first = b * args.batch_size
            # contiguous: `images` is a channels-first view of channels-last memory
            x = images[order[first + share.start:first + share.stop]].contiguous()
            loss = train_step(model, optimizer, x.to(device, non_blocking=True), augment_rng, args, share)
            total += loss
            progress.set_postfix(loss=f"{loss:.4f}")
    return total / batches


def checkpoint_state(model, optimizer, scheduler, rngs, *, epoch, args, config, wall_time):
    return {"model": model.state_dict(), "model_config": model_config(args), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng_state(),
            "shuffle_rng": rngs[0].get_state(), "augment_rng": rngs[1].get_state(), "config": config,
            "wall_time_s": wall_time}


def resume_training(run, model, optimizer, scheduler, rngs, config):
    """Load the run's last.pt (checked: ours, same invariant flags and data, weights that fit) and metrics.csv into the
    model, optimizer, scheduler, the two generators and the global RNGs.  Returns (epochs done, wall time,
    metrics rows), where fit continues."""
    state = read_resume_state(run, config, CHECKPOINT_KEYS, RESUME_INVARIANT_FLAGS, MODEL_NAME)
    restore_training(state, run.last_checkpoint, MODEL_NAME, model, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    rngs[0].set_state(state["shuffle_rng"])
    rngs[1].set_state(state["augment_rng"])
    rows = distributed.from_main(lambda: run.read_metrics(up_to=state["epoch"], key="epoch"))
    return state["epoch"], state["wall_time_s"], rows


def fit(model, optimizer, scheduler, rngs, *, images, batches, run, start, args, config, device):
    """Train from `start` (epochs done, wall time, metrics rows) until args.train_epochs, writing metrics.csv and
    last.pt after every epoch.

    images: (N, 3, 84, 84) uint8 train images, of which `batches` batches make an epoch.  rngs: the shuffling
    and the augmentation generators, see pretrain.
    """
    epoch, wall_time, rows = start
    trained = distributed.wrap_for_training(model, device)
    for epoch in range(epoch, args.train_epochs):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loss = train_epoch(trained, optimizer, images, batches, rngs, args, device, epoch)
        scheduler.step()
        wall_time += time.perf_counter() - started
        rows.append({"epoch": epoch + 1, "loss": loss, "lr": lr, "wall_time_s": wall_time})
        if distributed.is_main():  # last.pt last: a crash in between leaves a row that --resume drops
            run.write_metrics(rows)
            run.save_checkpoint("last", checkpoint_state(model, optimizer, scheduler, rngs, epoch=epoch + 1, args=args,
                                                         config=config, wall_time=wall_time))


@torch.inference_mode()
def encode(model, images, batch_size, device):
    """Encoder features of images (N, 3, 84, 84) uint8 in eval mode -> (N, F) float32 numpy array."""
    model.eval()
    features = torch.cat([model.encoder(eval_transform(images[i:i + batch_size].contiguous().to(device))).cpu()
                          for i in range(0, len(images), batch_size)])
    check_finite_result(features, "features")
    return features.numpy()


def export_features(model, data_dir, feature_dir, checkpoint, batch_size, device):
    """Write <split>_features.npy (N, F) float32, <split>_labels.npy (N,) int64 and manifest.json (which
    names the encoder by encoder_sha256: mimgnet's commands refuse features of another encoder than the one
    a model trained on).

    Rows are class-major in CSV order, as the image arrays. Every split is encoded and checked (features
    that tell no image apart, a class whose features are another's: check_distinct_classes, as
    mimgnet/main.py would refuse them) before the first write; the files are renamed into place together.
    Returns the manifest.
    """
    manifest = {"checkpoint": str(checkpoint), ENCODER_DIGEST: encoder_sha256(model), "data_dir": str(data_dir),
                "transform": EXPORT_TRANSFORM, "splits": {}}
    encoded, by_class = {}, {}  # by_class: {features file name: (C, I, F) view}
    for split in SPLITS:
        images, labels, names = load_split(data_dir, split)
        features = encode(model, images, batch_size, device)
        if len(features) > 1 and (features == features[:1]).all():
            raise UserError(f"{checkpoint} encodes every image of the {split} split to the same features: nothing "
                            "would tell them apart (an all-zero or degenerate encoder, or images all alike)")
        encoded[split] = features, labels.numpy()
        manifest["feature_size"] = features.shape[1]
        features_name, labels_name = feature_names(split)
        by_class[features_name] = features.reshape(len(names), -1, features.shape[1])
        manifest["splits"][split] = {"features": features_name, "labels": labels_name, "classes": names,
                                     "per_class": len(images) // len(names), "count": len(images)}
    try:
        check_distinct_classes(by_class, f"the features of {data_dir}")
    except UserError as e:  # check_data found the images of every class distinct: the encoder merges them
        raise UserError(f"{checkpoint} encodes images of different classes alike ({e}); their images differ "
                        "(compared before training and export), so the encoder tells them apart too little: "
                        "damaged weights, or an encoder trained into collapse") from None
    with OutputFolder(feature_dir, FEATURES_KIND, "--feature-save-dir") as folder, ExitStack() as stack:
        # the files are renamed into place on exit, in reverse order: the manifest last
        manifest_file = stack.enter_context(folder.writing(FEATURES_MANIFEST))
        for split, (features, labels) in encoded.items():
            for name, array in zip(feature_names(split), (features, labels)):
                np.save(stack.enter_context(folder.writing(name)), array)
        manifest_file.write(canonical_json(manifest))
    return manifest


def load_model(path, device):
    """A SimCLR model rebuilt from our checkpoint (architecture from its model_config)."""
    return build_model(load_checkpoint(path), path, SimCLR, MODEL_NAME).to(device)


def check_data(data_dir):
    """Validate every split before any work, so that a bad file fails now rather than after training: its
    array and class names, and no class in two places (check_distinct_classes on the images' thumbnails:
    a class copied into another split, in part or saved again with other bytes, as export would find it), and
    values that use 0-255 (check_full_range); a build that has not finished, or whose files changed since it
    wrote them (folders.check_as_written), first.  Returns the thumbnails {file name: (C, I, 21, 21, 3)}."""
    check_as_written(data_dir, "--data-dir", ["manifest.json", *(f"{split}_images.npy" for split in SPLITS)])
    for split in SPLITS:
        check_split(data_dir, split)
    splits = {f"{split}_images.npy": thumbnails(load_image_array(data_dir, split, mmap_mode="r")) for split in SPLITS}
    for name, split_thumbnails in splits.items():
        check_full_range(split_thumbnails, Path(data_dir) / name)
    check_distinct_image_classes(splits, str(data_dir))
    return splits


def check_export_not_trained_on(checkpoint, data_dir, splits):
    """Refuse an --export-only whose val or test images (splits: check_data's thumbnails) hold classes of the
    images the encoder of `checkpoint` trained on (features of them would be tested as new classes).  Its run
    config names that folder and the sha256 of its train split; where the folder, other than data_dir, still
    holds that split, the thumbnails are compared (check_distinct_image_classes)."""
    config = load_checkpoint(checkpoint).get("config")  # rank 0 alone exports
    config = config if isinstance(config, dict) else {}
    trained_on, digests = config.get(DATA_FOLDER), config.get(SPLIT_DIGESTS)
    if not isinstance(trained_on, str) or not isinstance(digests, dict) or not Path(trained_on).is_dir() or \
            Path(trained_on).resolve() == Path(data_dir).resolve():
        return
    try:
        train = load_image_array(trained_on, "train", mmap_mode="r")  # (C, I, 84, 84, 3), as pretrain's config
    except UserError:
        return
    if data_sha256({"train": train.reshape(-1, *train.shape[2:])}) == digests.get("train"):
        check_distinct_image_classes({**{name: splits[name] for name in ("val_images.npy", "test_images.npy")},
                                      f"the train images of {trained_on}, which {checkpoint} trained on":
                                          thumbnails(train)}, f"--export-only --data-dir {data_dir}")


def pretrain(args, device):
    """Train on the train split (or continue with --resume); returns the model and its last.pt path.

    The shuffling and the augmentation parameters come from two CPU generators with distinct seeds, the
    same in every process, so CPU and GPU runs, and any number of processes, see the same batches and
    views; the augmentations run on `device`.
    """
    images, _, _ = load_split(args.data_dir, "train")
    # the flags and the sha256 of the images (in the file's (N, 84, 84, 3) layout, not copied): --resume
    # refuses other images
    config = run_config(args, {"train": images.permute(0, 2, 3, 1)})
    batches = batches_per_epoch(len(images), args)
    distributed.check_batch_divides(args.batch_size)
    model, optimizer, scheduler = make_training(args, device)
    rngs = (torch.Generator().manual_seed(2 * args.seed), torch.Generator().manual_seed(2 * args.seed + 1))
    with run_folder(args.save_dir, MODEL_NAME, args.resume, progress="epoch") as run:
        start = resume_training(run, model, optimizer, scheduler, rngs, config) if args.resume else (0, 0.0, [])
        prepare_folder(run, config, args.resume, args.overwrite)
        fit(model, optimizer, scheduler, rngs, images=images, batches=batches, run=run, start=start, args=args,
            config=config, device=device)
    return model, run.last_checkpoint


def train_and_export(args, device):
    """Pre-train, then export the features of every split (rank 0 alone); returns the features manifest,
    or None in the other processes.  The data are checked before training and again before the export,
    which reads them anew after hours: a split replaced meanwhile is refused as such."""
    check_data(args.data_dir)
    model, checkpoint = pretrain(args, device)
    if not distributed.is_main():
        return None
    check_data(args.data_dir)
    return export_features(model, args.data_dir, args.feature_save_dir, checkpoint, args.batch_size, device)


def export_checkpoint(args, device):
    """--export-only: the features of --checkpoint; returns the features manifest."""
    check_export_not_trained_on(args.checkpoint, args.data_dir, check_data(args.data_dir))
    model = load_model(args.checkpoint, device)
    take_checkpoint_sizes(args, {"hidden_size": model.encoder.blocks[0][0].out_channels}, args.checkpoint)
    return export_features(model, args.data_dir, args.feature_save_dir, args.checkpoint, args.batch_size, device)
