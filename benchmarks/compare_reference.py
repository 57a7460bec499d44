"""Our code beside the authors': the same numbers in float64, and speed measured side by side.

--reference is your checkout of the authors' repository (`git clone https://github.com/db-Lee/Meta-GMVAE`);
its omniglot/, mimgnet/ and simclr/ model files are imported at run time, nothing of it is copied here.

Equivalence (float64): both Omniglot and both Mini-ImageNet models get the same weights (their state_dict
through our converter), the same batch, the same reparameterisation noise and the same EM starts; the
script reports the largest absolute difference of rec, kl, every gradient, the parameters and BatchNorm
running statistics after one Adam step, the test-time predictions, and NT-Xent on the same embeddings.
It exits with 1 when a difference exceeds --tolerance.

Speed (float32): training step (forward, backward, Adam) and prediction of both codes on the same
weights and data, in interleaved rounds; the median of --rounds rounds, wall and system CPU time.  Each
column runs in its own worker process, because torch reads its allocator settings once per process: the
authors' code as shipped, the authors' code with the CPU memory our commands set up (metagmvae.cpu_memory:
2 MB pages and the block arena), ours as shipped, ours with METAGMVAE_CPU_ALLOCATOR=torch (torch's own
allocator).  Then the peak resident memory of three training steps of each code in fresh processes, and
issue 23's goals table.
Exit code 2 with one line for a --reference folder that is not the authors' code (or whose code exits),
1 when a worker stops: a comparison that did not happen never exits 0.  Nothing is written into
--reference (no bytecode cache).

    python benchmarks/compare_reference.py --reference ../Meta-GMVAE
    python benchmarks/compare_reference.py --reference ../Meta-GMVAE --only speed --quick --threads 2
    python benchmarks/compare_reference.py --reference ../Meta-GMVAE --profile
"""
import argparse
import importlib.util
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch

# bench (beside this file) puts the project root on sys.path for the imports after it
from bench import EM_ITERS, QUERY, SHOT, WAY, feature_items, gmvae_predict, gmvae_train_step, omniglot_items
from metagmvae import cpu_memory
from metagmvae.cli import check_positive
from metagmvae.runfiles import UserError, exit_on_user_error
from mimgnet import model as mimgnet_model
from omniglot import model as omniglot_model
from simclr.loss import nt_xent

PROG = "benchmarks/compare_reference.py"
REFERENCE_FILES = ("omniglot/model.py", "omniglot/module.py", "mimgnet/model.py", "mimgnet/module.py",
                   "simclr/utils.py")
ADAM_EPS = 1e-8  # torch.optim.Adam's default, which both codes use
NEAR_TIE = 1e-9  # a prediction may differ only where our two top class probabilities are this close


# ---- the authors' code

def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _import_model(folder, tag):
    """folder/model.py, whose `from module import ...` must find the module.py beside it."""
    saved = sys.modules.get("module")
    sys.modules["module"] = _import_file(folder / "module.py", f"reference_{tag}_module")
    try:
        return _import_file(folder / "model.py", f"reference_{tag}_model")
    finally:
        sys.modules.pop("module")
        if saved is not None:
            sys.modules["module"] = saved


class WorkerFailed(UserError):
    """A worker process stopped before answering: nothing more can be compared (exit code 1)."""
    exit_code = 1


def load_reference(directory):
    """The authors' Omniglot and Mini-ImageNet GMVAE classes and their NTXentLoss, from their checkout.

    Nothing is written into it: Python's bytecode cache is off for this process (and its workers,
    `worker_env`).  Their classes are built once here, so that a folder holding other code, or code that
    exits (SystemExit) when imported or built, is refused before anything is compared."""
    root = Path(directory)
    missing = [f for f in REFERENCE_FILES if not (root / f).is_file()]
    if missing:
        raise UserError(f"{directory} is not a checkout of the authors' code (git clone "
                        f"https://github.com/db-Lee/Meta-GMVAE): no {missing[0]}")
    sys.dont_write_bytecode = True
    try:
        reference = SimpleNamespace(omniglot=_import_model(root / "omniglot", "omniglot").GMVAE,
                                    mimgnet=_import_model(root / "mimgnet", "mimgnet").GMVAE,
                                    nt_xent=_import_file(root / "simclr" / "utils.py", "reference_utils").NTXentLoss)
        model_pair(reference, "omniglot", WAY, 1, torch.float32, **OMNIGLOT_SIZES)
        model_pair(reference, "mimgnet", WAY, 1, torch.float32, **MIMGNET_SIZES)
        reference.nt_xent("cpu", 2, 0.5, True)
    except (Exception, SystemExit) as e:  # any failure means the folder holds other code than the authors'
        raise UserError(f"cannot import the authors' models from {directory}: {type(e).__name__}: {e}") from None
    return reference


def model_pair(reference, dataset, way, mc_samples, dtype, **sizes):
    """(the authors' model, ours) with the same weights; sizes are the authors' constructor arguments."""
    theirs = getattr(reference, dataset)(unsupervised_em_iters=EM_ITERS, semisupervised_em_iters=EM_ITERS,
                                         component_size=way, train_mc_sample_size=mc_samples,
                                         test_mc_sample_size=mc_samples, **sizes).to(dtype)
    ours_module = omniglot_model if dataset == "omniglot" else mimgnet_model
    state, config = ours_module.convert_reference_state_dict(theirs.state_dict())
    ours = (ours_module.OmniglotGMVAE if dataset == "omniglot" else ours_module.FeatureGMVAE)(**config).to(dtype)
    ours.load_state_dict(state)
    return theirs, ours


OMNIGLOT_SIZES = dict(hidden_size=64, latent_size=64)
MIMGNET_SIZES = dict(input_shape=256, latent_size=32)


# ---- equivalence

class SharedDraws:
    """One set of MC noise eps (B, M, S, D) and EM starts picks (B, K) for both codes.

    Ours reads them through the EpisodeRandom interface (`randn`, `rand`); `patch_reference` makes the
    authors' draws (torch.randn_like in reparametrize, np.random.choice per episode in
    get_unsupervised_prior) return them.
    """

    def __init__(self, eps, picks):
        self.eps, self.picks = eps, picks

    @classmethod
    def draw(cls, B, M, S, D, K, generator):
        eps = torch.randn(B, M, S, D, dtype=torch.float64, generator=generator)
        picks = torch.stack([torch.randperm(M * S, generator=generator)[:K] for _ in range(B)])
        return cls(eps, picks)

    def randn(self, *shape):
        if tuple(shape) != self.eps.shape:
            raise ValueError(f"noise of shape {shape} asked, {tuple(self.eps.shape)} drawn")
        return self.eps

    def rand(self, B, N):
        """Scores whose ascending order starts with the picks (our EM start takes the K lowest)."""
        rest = [[n for n in range(N) if n not in set(row.tolist())] for row in self.picks]
        order = torch.cat([self.picks, torch.tensor(rest, dtype=torch.long).view(B, -1)], dim=1)
        return torch.empty(B, N).scatter_(1, order, torch.arange(N, dtype=torch.float32).expand(B, N))

    @contextmanager
    def patch_reference(self):
        rows = iter(self.picks.numpy())
        with mock.patch.object(torch, "randn_like", lambda t: self.eps.reshape(t.shape).to(t)), \
                mock.patch.object(np.random, "choice", lambda n, k, replace: next(rows)):
            yield


class _Float64OneHot(torch.Tensor):
    """A one-hot tensor whose .float() stays float64."""

    def float(self):
        return self.double().as_subclass(torch.Tensor)


@contextmanager
def float64_one_hot():
    """The authors' prediction casts its one-hot labels with .float(); in float64 keep them float64."""
    one_hot = torch.nn.functional.one_hot
    with mock.patch.object(torch.nn.functional, "one_hot", lambda y, k: one_hot(y, k).as_subclass(_Float64OneHot)):
        yield


def largest_difference(ours, theirs):
    """(max |a - b|, max |b|) over two {name: tensor} dicts with the same names."""
    if set(ours) != set(theirs):
        raise RuntimeError(f"different tensors: {sorted(set(ours) ^ set(theirs))[:4]}")
    return (max((ours[n].double() - theirs[n].double()).abs().max().item() for n in ours),
            max(theirs[n].double().abs().max().item() for n in theirs))


def biases_before_batchnorm(model):
    """Names of the biases that a BatchNorm follows directly: their gradient is 0 in exact arithmetic."""
    return {f"{name}.{i - 1}.bias" for name, seq in model.named_modules() if isinstance(seq, torch.nn.Sequential)
            for i in range(1, len(seq)) if isinstance(seq[i], torch.nn.BatchNorm2d) and seq[i - 1].bias is not None}


def prediction_agreement(probs, theirs_pred):
    """(queries, disagreements, disagreements that are not near-ties) from our probabilities (B, Nq, K)."""
    top2 = probs.topk(2, dim=-1).values
    differ = probs.argmax(-1) != theirs_pred
    not_tie = differ & (top2[..., 0] - top2[..., 1] > NEAR_TIE)
    return probs.shape[0] * probs.shape[1], int(differ.sum()), int(not_tie.sum())


def compare_dataset(reference, dataset, items, sizes, B, M, S, lr, weight_decay, generator, tolerance):
    """Rows (quantity, largest |difference|, largest |value|, tolerance, note) of one training step and one
    prediction of both models."""
    theirs, ours = model_pair(reference, dataset, WAY, S, torch.float64, **sizes)
    x = items(B, M).double()
    draws = SharedDraws.draw(B, M, S, sizes["latent_size"], WAY, generator)
    # training step
    with draws.patch_reference():
        rec_theirs, kl_theirs = theirs(x)
    out = ours(x, WAY, S, EM_ITERS, rng=draws)
    (rec_theirs + kl_theirs).backward()
    out["loss"].backward()
    convert = (omniglot_model if dataset == "omniglot" else mimgnet_model).convert_reference_state_dict
    grads_theirs = convert({n: p.grad for n, p in theirs.named_parameters()})[0]
    grads_ours = {n: p.grad for n, p in ours.named_parameters()}
    for model in (theirs, ours):
        torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay).step()
    state_theirs, state_ours = convert(theirs.state_dict())[0], ours.state_dict()
    rows = [("rec", abs(out["rec"].item() - rec_theirs.item()), abs(rec_theirs.item()), tolerance, ""),
            ("kl", abs(out["kl"].item() - kl_theirs.item()), abs(kl_theirs.item()), tolerance, ""),
            (f"gradients ({len(grads_ours)} tensors)", *largest_difference(grads_ours, grads_theirs), tolerance, "")]
    stats = [n for n in state_ours if "running_" in n or "num_batches_tracked" in n]
    zero_grad = biases_before_batchnorm(ours)
    params = [n for n in state_ours if n not in stats and n not in zero_grad]
    rows.append((f"parameters after one Adam step ({len(params)} tensors)", *largest_difference(
        {n: state_ours[n] for n in params}, {n: state_theirs[n] for n in params}), tolerance, ""))
    if zero_grad:
        # Their gradient is 0 in exact arithmetic; Adam's first step lr g / (|g| + eps) scales the rounding
        # noise in g by up to lr / eps, so the gradient tolerance is scaled the same way.
        rows.append((f"biases before BatchNorm after the step ({len(zero_grad)} tensors)", *largest_difference(
            {n: state_ours[n] for n in zero_grad}, {n: state_theirs[n] for n in zero_grad}),
            tolerance * lr / ADAM_EPS, "gradient 0 up to rounding; Adam scales it by lr/eps"))
    if stats:
        rows.append((f"BatchNorm running statistics ({len(stats)} tensors)", *largest_difference(
            {n: state_ours[n] for n in stats}, {n: state_theirs[n] for n in stats}), tolerance, ""))
    # prediction, in evaluation mode after the step: 4 five-way one-shot episodes with 15 queries per class
    theirs.eval(), ours.eval()
    E, Ns, Nq = 4, WAY * SHOT, WAY * QUERY
    support, query = items(E, Ns).double(), items(E, Nq).double()
    labels = torch.arange(WAY).repeat_interleave(SHOT).repeat(E, 1)
    draws = SharedDraws.draw(E, Ns + Nq, S, sizes["latent_size"], WAY, generator)
    with draws.patch_reference(), float64_one_hot(), torch.no_grad():
        pred_theirs = theirs.prediction(support, labels, query)
    probs = ours.predict(support, labels, query, WAY, S, EM_ITERS, draws)
    total, differ, not_tie = prediction_agreement(probs, pred_theirs)
    note = f"{total - differ}/{total} queries agree" + (f", {differ - not_tie} near-ties" if differ else "")
    rows.append(("predictions: disagreements that are not near-ties", not_tie, total, 0, note))
    return rows


def compare_nt_xent(reference, generator, tolerance, N=64, D=128):
    """Rows of NT-Xent (ours vs the authors' NTXentLoss, cosine, temperature 0.5) and its gradient."""
    z1, z2 = (torch.randn(N, D, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2))
    loss_theirs = reference.nt_xent("cpu", N, 0.5, True)(z1, z2)
    grads_theirs = torch.autograd.grad(loss_theirs, (z1, z2))
    loss_ours = nt_xent(z1, z2)
    grads_ours = torch.autograd.grad(loss_ours, (z1, z2))
    return [("loss", abs(loss_ours.item() - loss_theirs.item()), abs(loss_theirs.item()), tolerance, ""),
            ("gradient of both views", *largest_difference(dict(enumerate(grads_ours)), dict(enumerate(grads_theirs))),
             tolerance, "")]


def equivalence(reference, tolerance):
    """Print the equivalence table; returns the number of quantities beyond tolerance."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    sections = [
        ("Omniglot, B=2 M=20 S=4 (h=D=64)", compare_dataset(reference, "omniglot", omniglot_items, OMNIGLOT_SIZES,
                                                            2, 20, 4, 1e-3, 1e-6, generator, tolerance)),
        ("Mini-ImageNet, B=4 M=5 S=16 (F=256, D=32)", compare_dataset(reference, "mimgnet", feature_items,
                                                                      MIMGNET_SIZES, 4, 5, 16, 1e-4, 5e-2, generator,
                                                                      tolerance)),
        ("NT-Xent, 2 x 64 embeddings of 128", compare_nt_xent(reference, generator, tolerance))]
    print(f"\nEquivalence in float64, tolerance {tolerance:g} (largest absolute difference, ours vs the authors')\n")
    print("| model | quantity | largest difference | largest value | tolerance | note |\n|---|---|---|---|---|---|")
    failures = 0
    for section, rows in sections:
        for quantity, difference, scale, limit, note in rows:
            beyond = not difference <= limit  # a NaN is beyond any tolerance
            failures += beyond
            shown = [f"{v}" if isinstance(v, int) else f"{v:.2e}" for v in (difference, scale, limit)]
            print(f"| {section} | {quantity} | {shown[0]}{' **beyond tolerance**' if beyond else ''} | {shown[1]} "
                  f"| {shown[2]} | {note} |")
    return failures


# ---- speed

def reference_train_step(model, items, lr, weight_decay, B, M):
    """One Adam step of the authors' model on B random sets of M items (their loop's body)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    x = items(B, M)

    def step():
        model.zero_grad()
        rec, kl = model(x)
        (rec + kl).backward()
        optimizer.step()
    return step


def reference_predict(model, items, B):
    """The authors' prediction for B five-way one-shot episodes with 15 queries per class."""
    model.eval()
    support, query = items(B, WAY * SHOT), items(B, WAY * QUERY)
    labels = torch.arange(WAY).repeat_interleave(SHOT).repeat(B, 1)

    def predict():
        with torch.no_grad():
            model.prediction(support, labels, query)
    return predict


def train_runners(reference, dataset, items, sizes, B, M, S, lr, weight_decay):
    """(authors' step, our step) on the same weights and the same batch (seeded before each draw)."""
    theirs, ours = model_pair(reference, dataset, WAY, S, torch.float32, **sizes)
    torch.manual_seed(0)
    run_theirs = reference_train_step(theirs, items, lr, weight_decay, B, M)
    torch.manual_seed(0)
    return run_theirs, gmvae_train_step(ours, items, lr, weight_decay, B, M, S, torch.device("cpu"), False)


def predict_runners(reference, dataset, items, sizes, B, S):
    """(authors' prediction, ours) on the same weights and episodes."""
    theirs, ours = model_pair(reference, dataset, WAY, S, torch.float32, **sizes)
    torch.manual_seed(0)
    run_theirs = reference_predict(theirs, items, B)
    torch.manual_seed(0)
    return run_theirs, gmvae_predict(ours, items, B, S, torch.device("cpu"), False)


OMNIGLOT = ("omniglot", omniglot_items, OMNIGLOT_SIZES)
MIMGNET = ("mimgnet", feature_items, MIMGNET_SIZES)
# name -> runner factory (reference -> (authors' run, our run)); "default" = the 5-way experiment's flags
SPEED_CASES = {
    "Omniglot train step, reduced B=1 M=100 S=8": lambda r: train_runners(r, *OMNIGLOT, 1, 100, 8, 1e-3, 1e-6),
    "Omniglot train step, default B=4 M=200 S=32": lambda r: train_runners(r, *OMNIGLOT, 4, 200, 32, 1e-3, 1e-6),
    "Omniglot prediction, 4 episodes S=8": lambda r: predict_runners(r, *OMNIGLOT, 4, 8),
    "Omniglot prediction, 4 episodes S=32": lambda r: predict_runners(r, *OMNIGLOT, 4, 32),
    "Mini-ImageNet train step, default B=16 M=5 S=256": lambda r: train_runners(r, *MIMGNET, 16, 5, 256,
                                                                                 1e-4, 5e-2),
    "Mini-ImageNet prediction, 16 episodes S=256": lambda r: predict_runners(r, *MIMGNET, 16, 256),
}
SLOW_CASE = "Omniglot train step, default B=4 M=200 S=32"


# Columns of the speed table: (heading, code, settings in its worker's environment).  The authors' code
# runs as shipped (torch's allocator, no huge pages) and with the CPU memory our commands set up on a CPU
# (metagmvae.cpu_memory: 2 MB pages and the block arena); ours as our commands run it, and with torch's
# own allocator (METAGMVAE_CPU_ALLOCATOR=torch, 2 MB pages: our default before the arena).  A variable
# absent here is removed from the worker's environment.
COLUMNS = (("authors' code", "theirs", {"THP_MEM_ALLOC_ENABLE": "0", "METAGMVAE_CPU_ALLOCATOR": "torch"}),
           ("authors' code, our CPU memory", "theirs", {"THP_MEM_ALLOC_ENABLE": "1"}),
           ("ours", "ours", {}),
           ("ours, torch's allocator", "ours", {"METAGMVAE_CPU_ALLOCATOR": "torch"}))
CODE_NAMES = {"theirs": "the authors' code", "ours": "ours"}
MEMORY_STEPS = 3  # training steps of the peak-memory processes: the arena settles after the first


def worker_env(settings):
    """The environment of a worker: the column's settings, and no bytecode written (nothing is written
    into --reference)."""
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "METAGMVAE_CPU_ALLOCATOR")}
    return env | {"PYTHONDONTWRITEBYTECODE": "1"} | settings


class Worker:
    """One code in its own process (torch and glibc read their allocator settings once per process):
    `prepare(case)` builds both models with the same weights and data, keeps its own and runs it once;
    `run()` times one call: (wall seconds, system CPU seconds)."""

    def __init__(self, reference_dir, threads, code, settings):
        self.code = code
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--reference", str(reference_dir), "--threads", str(threads), "--worker", code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=worker_env(settings))

    def ask(self, line):
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:
            raise WorkerFailed(f"the worker timing {CODE_NAMES[self.code]} stopped with exit code "
                               f"{self.process.wait()} before the comparison ended")
        return answer

    def prepare(self, case):
        self.ask(case)

    def run(self):
        wall, system = self.ask("run").split()
        return float(wall), float(system)

    def close(self):
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        self.process.wait()


def serve(reference, code):
    """The worker's loop: a case name on stdin builds and warms up that case; "run" prints one call's wall
    and system CPU seconds."""
    run = None
    for line in sys.stdin:
        if line.strip() == "run":
            system = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            start = time.perf_counter()
            run()
            wall = time.perf_counter() - start
            print(wall, resource.getrusage(resource.RUSAGE_SELF).ru_stime - system, flush=True)
        else:
            run = SPEED_CASES[line.strip()](reference)[code == "ours"]
            run()
            print("ready", flush=True)


def speed(reference_dir, threads, rounds, slow_rounds, quick):
    """Print the speed table: median seconds of `rounds` rounds (`slow_rounds` for the default Omniglot
    training step); each round runs every column once, the order rotating from round to round.  Returns
    {case: ([median wall s], [median system CPU s]) per column}."""
    slow = "" if quick else f" ({slow_rounds} for {SLOW_CASE})"
    print(f"\nSpeed in float32: median of {rounds} interleaved rounds{slow} after one warm-up run of each; "
          f"each column in its own process\n")
    print("| configuration | " + " | ".join(heading for heading, _, _ in COLUMNS)
          + " | ratio | ratio, both with our CPU memory | ratio, ours with torch's allocator |"
          + "\n|---|---|---|---|---|---|---|---|")
    workers = [Worker(reference_dir, threads, code, settings) for _, code, settings in COLUMNS]
    medians = {}
    try:
        for name in SPEED_CASES:
            if quick and name == SLOW_CASE:
                continue
            for worker in workers:
                worker.prepare(name)
            times = [[] for _ in workers]
            for r in range(slow_rounds if name == SLOW_CASE else rounds):
                for i in ((r + k) % len(workers) for k in range(len(workers))):
                    times[i].append(workers[i].run())
            medians[name] = ([statistics.median(w for w, _ in t) for t in times],
                             [statistics.median(s for _, s in t) for t in times])
            theirs, theirs_memory, ours, ours_torch = medians[name][0]
            print(f"| {name} | {format_seconds(theirs)} | {format_seconds(theirs_memory)} | {format_seconds(ours)} "
                  f"| {format_seconds(ours_torch)} | {theirs / ours:.2f}x | {theirs_memory / ours:.2f}x "
                  f"| {theirs / ours_torch:.2f}x |", flush=True)
    finally:
        for worker in workers:
            worker.close()
    return medians


def format_seconds(seconds):
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


MEMORY_COLUMNS = (COLUMNS[0], COLUMNS[2], COLUMNS[3])


def peak_memory(reference_dir, quick, threads):
    """Print the peak resident memory of MEMORY_STEPS training steps of the authors' code as shipped, ours
    and ours with torch's allocator, each in a fresh subprocess.  Returns {case: [MiB per column]}."""
    names = [n for n in SPEED_CASES if "train step" in n and not (quick and n == SLOW_CASE)]
    print(f"\nPeak resident memory of {MEMORY_STEPS} training steps (fresh process each; includes torch "
          f"itself)\n")
    print("| configuration | " + " | ".join(heading for heading, _, _ in MEMORY_COLUMNS)
          + " | ratio | ratio, ours with torch's allocator |\n|---|---|---|---|---|---|")
    peaks = {}
    for name in names:
        peaks[name] = [peak_of_fresh_process(reference_dir, threads, name, code, settings)
                       for _, code, settings in MEMORY_COLUMNS]
        theirs, ours, ours_torch = peaks[name]
        print(f"| {name} | {theirs:.0f} MiB | {ours:.0f} MiB | {ours_torch:.0f} MiB | {theirs / ours:.2f}x "
              f"| {theirs / ours_torch:.2f}x |", flush=True)
    return peaks


def peak_of_fresh_process(reference_dir, threads, name, code, settings):
    result = subprocess.run([sys.executable, __file__, "--reference", str(reference_dir), "--threads", str(threads),
                             "--peak-rss-of", name, code], stdout=subprocess.PIPE, text=True, env=worker_env(settings))
    if result.returncode != 0 or not result.stdout.split():
        raise WorkerFailed(f"the process measuring the memory of {CODE_NAMES[code]} stopped with exit code "
                           f"{result.returncode} before the comparison ended")
    return float(result.stdout.split()[-1])


GOALS = (("Omniglot train step, default B=4 M=200 S=32", 2.5), ("Omniglot train step, reduced B=1 M=100 S=8", 2.0),
         ("Omniglot prediction, 4 episodes S=32", 4.0))


def goals(medians, peaks):
    """Print issue 23's table from this run: the ratios to the authors' code as shipped, the system CPU
    time and the peak memory of a default Omniglot step."""
    print("\nIssue 23's goals (ratio = the authors' code as shipped / ours)\n")
    print("| measure | authors' code | ours | ours, torch's allocator | goal |\n|---|---|---|---|---|")
    for name, goal in GOALS:
        if name in medians:
            theirs, _, ours, ours_torch = medians[name][0]
            print(f"| {name}: ratio | 1x | {theirs / ours:.2f}x | {theirs / ours_torch:.2f}x | >= {goal:g}x |")
    if SLOW_CASE in medians:
        theirs, _, ours, ours_torch = medians[SLOW_CASE][1]
        print(f"| system CPU time of a default Omniglot step | {theirs:.2f} s | {ours:.2f} s | {ours_torch:.2f} s "
              f"| < 2 s |")
    if SLOW_CASE in peaks:
        theirs, ours, ours_torch = (mib / 1024 for mib in peaks[SLOW_CASE])
        print(f"| peak resident memory of default Omniglot steps | {theirs:.2f} GiB | {ours:.2f} GiB "
              f"| {ours_torch:.2f} GiB | no more than with torch's allocator |")


def peak_rss_of(reference, name, code):
    """Peak resident MiB of this process after MEMORY_STEPS training steps of `code` in case `name`.

    VmHWM, not getrusage's ru_maxrss: the latter keeps the parent's peak across fork and exec.
    """
    run = SPEED_CASES[name](reference)[code == "ours"]
    for _ in range(MEMORY_STEPS):
        run()
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def profile(reference, quick):
    """Top operators by self CPU time in three of our Omniglot training steps (reduced with --quick), then
    in ten of our Omniglot predictions at S=32, there by operator and input shape (one row per layer)."""
    step = "Omniglot train step, reduced B=1 M=100 S=8" if quick else SLOW_CASE
    for name, calls, by_shape in (step, 3, False), ("Omniglot prediction, 4 episodes S=32", 10, True):
        run = SPEED_CASES[name](reference)[1]
        run()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=by_shape) as prof:
            for _ in range(calls):
                run()
        print(f"\nWhere the time goes: ours, {name}, {calls} calls\n")
        print(prof.key_averages(group_by_input_shape=by_shape).table(
            sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40, max_shapes_column_width=60))


def machine():
    """One line: torch, threads, CPUs and their model name, the kernel's huge-page mode."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    thp_mode = thp.read_text().split("[")[1].split("]")[0] if thp.exists() else "none"
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
            f"({names[0] if names else platform.processor()}), python {platform.python_version()}, "
            f"transparent huge pages: {thp_mode}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True,
                   help="your checkout of the authors' code (git clone https://github.com/db-Lee/Meta-GMVAE)")
    p.add_argument("--only", choices=["equivalence", "speed"], help="run one part (default: both)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per configuration (median)")
    p.add_argument("--slow-rounds", type=int,
                   help="rounds for the default Omniglot training step (default: --rounds)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true",
                   help="skip the default Omniglot training step (tens of seconds per step on a CPU)")
    p.add_argument("--tolerance", type=float, default=1e-10, help="largest absolute difference accepted")
    p.add_argument("--profile", action="store_true",
                   help="only profile our default Omniglot training step (reduced with --quick) and prediction")
    p.add_argument("--peak-rss-of", nargs=2, metavar=("CONFIGURATION", "CODE"), help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["theirs", "ours"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cpu_memory.set_up()  # as our commands do; every column sets or removes the variables it reads
    cpu_memory.use_arena()  # as our commands on the CPU, unless the column says METAGMVAE_CPU_ALLOCATOR=torch
    with exit_on_user_error(PROG):
        args.slow_rounds = args.rounds if args.slow_rounds is None else args.slow_rounds
        check_positive(args, ["rounds", "slow_rounds", "threads"])
        torch.set_num_threads(args.threads)
        reference = load_reference(args.reference)
        if args.peak_rss_of:
            print(peak_rss_of(reference, *args.peak_rss_of))
            return
        if args.worker:
            serve(reference, args.worker)
            return
        print(machine())
        if args.profile:
            profile(reference, args.quick)
            return
        try:
            failures = 0 if args.only == "speed" else equivalence(reference, args.tolerance)
        except SystemExit as stop:  # raised by the authors' code: nothing of ours raises it here
            raise UserError(f"the code in {args.reference} exited (SystemExit: {stop.code}) during the "
                            f"comparison: it is not the authors' code") from None
        if args.only != "equivalence":
            goals(speed(args.reference, args.threads, args.rounds, args.slow_rounds, args.quick),
                  peak_memory(args.reference, args.quick, args.threads))
    if failures:
        sys.exit(f"{PROG}: {failures} quantities differ beyond tolerance {args.tolerance:g}")


if __name__ == "__main__":
    main()
