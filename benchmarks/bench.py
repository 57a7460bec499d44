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

from omniglot.model import OmniglotGMVAE  # noqa: E402

# name -> (kind, B episodes, M items (train) or queries per class (predict), S MC samples); Omniglot 5-way
CONFIGS = {
    "omniglot-train-default": ("train", 4, 200, 32),
    "omniglot-train-reduced": ("train", 1, 100, 8),
    "omniglot-predict-1shot": ("predict", 4, 15, 32),
}
WAY, SHOT, EM_ITERS = 5, 1, 10


def binary_images(*shape):
    return (torch.rand(*shape, 1, 28, 28) > 0.8).float()


def make_runner(kind, B, M, S):
    """A closure running one training step or one prediction batch on fresh random data."""
    model = OmniglotGMVAE()
    if kind == "train":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
        x = binary_images(B, M)

        def step():
            out = model(x, WAY, S, EM_ITERS)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
        return step
    model.eval()
    support, query = binary_images(B, WAY * SHOT), binary_images(B, WAY * M)
    labels = torch.arange(WAY).repeat_interleave(SHOT).expand(B, -1)

    def predict():
        with torch.inference_mode():
            model.predict(support, labels, query, WAY, S, EM_ITERS)
    return predict


def measure(name, repeats, warmup):
    kind, B, M, S = CONFIGS[name]
    torch.manual_seed(0)
    run = make_runner(kind, B, M, S)
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    return {"config": name, "kind": kind, "B": B, "M_or_query": M, "S": S, "min_ms": min(times),
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
    print("| configuration | B | M / query | S | min ms | median ms | peak RSS MiB |\n|---|---|---|---|---|---|---|")
    for name in args.only or CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats),
                              "--warmup", str(args.warmup)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['B']} | {r['M_or_query']} | {r['S']} | {r['min_ms']:.0f} | {r['median_ms']:.0f} | "
              f"{r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
