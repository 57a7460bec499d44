"""Speed benchmark: ms per training step and per prediction batch, with peak memory, the CPU time the
process spent per call in user code and in the kernel ("system": on CPU mostly page faults), and the page
faults per call.

Each configuration runs in a fresh subprocess so that its peak memory (resident on CPU, allocated on the
GPU) is its own.  Like every command, it sets up CPU memory with metagmvae.cpu_memory (2 MB pages, and on
the CPU the block arena): export THP_MEM_ALLOC_ENABLE=0 to measure without 2 MB pages,
METAGMVAE_CPU_ALLOCATOR=torch to measure with torch's own allocator (docs/performance.md, "Page faults").

    python benchmarks/bench.py                 # all configurations
    python benchmarks/bench.py --only omniglot-train-reduced --repeats 5
    python benchmarks/bench.py --device cuda --amp
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

from metagmvae import cpu_memory  # noqa: E402
from metagmvae.distributed import resolve_device  # noqa: E402
from metagmvae.episodes import EpisodeRandom  # noqa: E402
from metagmvae.gmvae import autocast  # noqa: E402
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


def gmvae_train_step(model, items, lr, weight_decay, B, M, S, device, amp):
    """One Adam step of the Meta-GMVAE objective on B random sets of M items; the MC noise and EM starts
    come from per-episode keyed streams, as in training."""
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    x = items(B, M).to(device)

    def step():
        with autocast(device, amp):
            out = model(x, WAY, S, EM_ITERS, rng=EpisodeRandom.for_episodes(range(B), 0))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
    return step


def gmvae_predict(model, items, B, S, device, amp):
    """Prediction for B five-way one-shot episodes with 15 queries per class."""
    model.to(device).eval()
    support, query = items(B, WAY * SHOT).to(device), items(B, WAY * QUERY).to(device)
    labels = torch.arange(WAY, device=device).repeat_interleave(SHOT).expand(B, -1)

    def predict():
        with torch.inference_mode(), autocast(device, amp):
            model.predict(support, labels, query, WAY, S, EM_ITERS, EpisodeRandom.for_episodes(range(B), 0))
    return predict


def simclr_train_step(batch, device, amp):
    """Two augmented views of a uint8 batch, forward, NT-Xent, backward, Adam."""
    model = SimCLR().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 3, 84, 84), dtype=torch.uint8).to(device)
    generator = torch.Generator().manual_seed(0)

    def step():
        view1, view2 = two_views(images, generator)
        with autocast(device, amp):
            z = model(torch.cat([view1, view2]))
        loss = nt_xent(*z.float().chunk(2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def simclr_augment(batch, device, amp):
    images = torch.randint(0, 256, (batch, 3, 84, 84), dtype=torch.uint8).to(device)
    generator = torch.Generator().manual_seed(0)
    return lambda: two_views(images, generator)


# name -> (description of the work, runner factory (device, amp))
CONFIGS = {
    "omniglot-train-default": ("B=4 M=200 S=32", lambda *d: gmvae_train_step(
        OmniglotGMVAE(), omniglot_items, 1e-3, 1e-6, 4, 200, 32, *d)),
    "omniglot-train-reduced": ("B=1 M=100 S=8", lambda *d: gmvae_train_step(
        OmniglotGMVAE(), omniglot_items, 1e-3, 1e-6, 1, 100, 8, *d)),
    "omniglot-predict": ("4 episodes 5-way 1-shot 15 query, S=32", lambda *d: gmvae_predict(
        OmniglotGMVAE(), omniglot_items, 4, 32, *d)),
    "mimgnet-train-default": ("B=16 M=5 S=256", lambda *d: gmvae_train_step(
        FeatureGMVAE(), feature_items, 1e-4, 5e-2, 16, 5, 256, *d)),
    "mimgnet-predict": ("16 episodes 5-way 1-shot 15 query, S=256", lambda *d: gmvae_predict(
        FeatureGMVAE(), feature_items, 16, 256, *d)),
    "simclr-augment-512": ("two views of 512 images", lambda *d: simclr_augment(512, *d)),
    "simclr-train-512": ("batch 512 incl. augmentation", lambda *d: simclr_train_step(512, *d)),
}


def measure(name, repeats, warmup, device, amp):
    """Min and median ms over `repeats` runs after `warmup`; peak GPU memory allocated, or peak RSS on CPU."""
    torch.manual_seed(0)
    run = CONFIGS[name][1](device, amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        run()
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else after.ru_maxrss / 1024)
    return {"config": name, "work": CONFIGS[name][0], "min_ms": min(times),
            "median_ms": statistics.median(times), "repeats": repeats, "peak_mib": peak,
            "user_s": (after.ru_utime - before.ru_utime) / repeats,
            "system_s": (after.ru_stime - before.ru_stime) / repeats,
            "page_faults": (after.ru_minflt - before.ru_minflt) // repeats}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="configurations to run (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the networks, as the --amp flag of main.py")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    cpu_memory.set_up()  # as every command of the project
    device = resolve_device(args.device)  # on the CPU, as every command: the block arena
    if args.child:
        print(json.dumps(measure(args.child, args.repeats, args.warmup, device, args.amp)))
        return
    where = (torch.cuda.get_device_name() if device.type == "cuda" else
             f"threads {torch.get_num_threads()}, {torch.backends.mkldnn.is_available() and 'oneDNN' or 'no oneDNN'}")
    print(f"torch {torch.__version__}, {where}, amp {args.amp}, python {sys.version.split()[0]}")
    memory = "peak GPU MiB" if device.type == "cuda" else "peak RSS MiB"
    print(f"| configuration | work | min ms | median ms | {memory} | CPU s per call: user | system "
          "| page faults per call |\n|---|---|---|---|---|---|---|---|")
    for name in args.only or CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats),
                              "--warmup", str(args.warmup), "--device", args.device, *(["--amp"] * args.amp)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['work']} | {r['min_ms']:.0f} | {r['median_ms']:.0f} | {r['peak_mib']:.0f} "
              f"| {r['user_s']:.2f} | {r['system_s']:.2f} | {r['page_faults']} |", flush=True)


if __name__ == "__main__":
    main()
