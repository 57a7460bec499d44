"""Speed benchmark: ms per training step and per prediction batch, with peak memory.

Each configuration runs in a fresh subprocess so that its peak resident memory is its own.

    python benchmarks/bench.py                 # all configurations
    python benchmarks/bench.py --only omniglot-train-reduced --repeats 5
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metagmvae.keyed_random import EpisodeRandom  # noqa: E402
from mimgnet.model import FeatureGMVAE  # noqa: E402
from omniglot.model import OmniglotGMVAE  # noqa: E402
from simclr.augment import two_views  # noqa: E402
from simclr.loss import nt_xent  # noqa: E402
from simclr.model import SimCLR  # noqa: E402

WAY, SHOT, QUERY, EM_ITERS = 5, 1, 15, 10


def omniglot_items(*shape):
    return (torch.rand(*shape, 1, 28, 28) > 0.8).float()


def feature_items(*shape):
    return torch.relu(torch.randn(*shape, 256))


def gmvae_train_step(model, items, lr, weight_decay, B, M, S):
    """One Adam step of the Meta-GMVAE objective on B random sets of M items; the MC noise and EM starts
    come from per-episode keyed streams, as in training."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    x = items(B, M)

    def step():
        out = model(x, WAY, S, EM_ITERS, rng=EpisodeRandom.for_episodes(range(B), 0))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
    return step


def gmvae_predict(model, items, B, S):
    """Prediction for B five-way one-shot episodes with 15 queries per class."""
    model.eval()
    support, query = items(B, WAY * SHOT), items(B, WAY * QUERY)
    labels = torch.arange(WAY).repeat_interleave(SHOT).expand(B, -1)

    def predict():
        with torch.inference_mode():
            model.predict(support, labels, query, WAY, S, EM_ITERS, EpisodeRandom.for_episodes(range(B), 0))
    return predict


def simclr_train_step(batch):
    """Two augmented views of a uint8 batch, forward, NT-Xent, backward, Adam."""
    model = SimCLR()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 3, 84, 84), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)

    def step():
        view1, view2 = two_views(images, generator)
        loss = nt_xent(*model(torch.cat([view1, view2])).chunk(2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def simclr_augment(batch):
    images = torch.randint(0, 256, (batch, 3, 84, 84), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    return lambda: two_views(images, generator)


# name -> (description of the work, runner factory); the reference's cost is in REFERENCE.md
CONFIGS = {
    "omniglot-train-default": ("B=4 M=200 S=32", lambda: gmvae_train_step(
        OmniglotGMVAE(), omniglot_items, 1e-3, 1e-6, 4, 200, 32)),
    "omniglot-train-reduced": ("B=1 M=100 S=8", lambda: gmvae_train_step(
        OmniglotGMVAE(), omniglot_items, 1e-3, 1e-6, 1, 100, 8)),
    "omniglot-predict": ("4 episodes 5-way 1-shot 15 query, S=32", lambda: gmvae_predict(
        OmniglotGMVAE(), omniglot_items, 4, 32)),
    "mimgnet-train-default": ("B=16 M=5 S=256", lambda: gmvae_train_step(
        FeatureGMVAE(), feature_items, 1e-4, 5e-2, 16, 5, 256)),
    "mimgnet-predict": ("16 episodes 5-way 1-shot 15 query, S=256", lambda: gmvae_predict(
        FeatureGMVAE(), feature_items, 16, 256)),
    "simclr-augment-512": ("two views of 512 images", lambda: simclr_augment(512)),
    "simclr-train-512": ("batch 512 incl. augmentation", lambda: simclr_train_step(512)),
}


def measure(name, repeats, warmup):
    torch.manual_seed(0)
    run = CONFIGS[name][1]()
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    return {"config": name, "work": CONFIGS[name][0], "min_ms": min(times),
            "median_ms": statistics.median(times), "repeats": repeats,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="configurations to run (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats, args.warmup)))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{torch.backends.mkldnn.is_available() and 'oneDNN' or 'no oneDNN'}, python {sys.version.split()[0]}")
    print("| configuration | work | min ms | median ms | peak RSS MiB |\n|---|---|---|---|---|")
    for name in args.only or CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats),
                              "--warmup", str(args.warmup)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['work']} | {r['min_ms']:.0f} | {r['median_ms']:.0f} | {r['peak_rss_mib']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
