"""The measurements behind docs/performance.md, "Part 2": alternatives to the Omniglot decoder's layers
timed outside the training step, our decoder with torch's transposed convolutions and with ours (the bias
added after), ReLU's backward outside the step, the encoder's evaluation-mode order,
the MC noise drawn on one thread and on torch's threads, and where our prediction spends its time.  Best
of 3 calls after a warm-up, float32 on the CPU, with the CPU memory our commands use (metagmvae.cpu_memory).

    OMP_NUM_THREADS=2 python benchmarks/decoder_alternatives.py
    OMP_NUM_THREADS=2 python benchmarks/decoder_alternatives.py --prediction-only
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gmvae_predict, omniglot_items  # noqa: E402
from metagmvae import cpu_memory  # noqa: E402
from metagmvae.distributed import resolve_device  # noqa: E402
from metagmvae.episodes import EpisodeRandom  # noqa: E402
from omniglot.model import ConvTranspose2d, OmniglotGMVAE  # noqa: E402

CHANNELS = 64
# A stride-2, padding-1, 4x4 transposed convolution gives output row 2i + phase from input rows i + offset
# through kernel row u: phase 0 from offsets (-1, 0) with u = (3, 1), phase 1 from (0, +1) with u = (2, 0).
PHASE_TAPS = {0: ((-1, 3), (0, 1)), 1: ((0, 2), (1, 0))}


def best_ms(run, calls=3):
    run()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def sub_pixel_weight(weight):
    """The 3x3 convolution weight (4 Cout, Cin, 3, 3) whose output, pixel-shuffled by 2, equals
    conv_transpose2d(x, weight, stride=2, padding=1) for a 4x4 weight (Cin, Cout, 4, 4)."""
    c_in, c_out = weight.shape[:2]
    conv = weight.new_zeros(c_out, 2, 2, c_in, 3, 3)
    for a, rows in PHASE_TAPS.items():
        for b, cols in PHASE_TAPS.items():
            for dy, u in rows:
                for dx, v in cols:
                    conv[:, a, b, :, dy + 1, dx + 1] = weight[:, :, u, v].t()
    return conv.reshape(4 * c_out, c_in, 3, 3)


def forward_and_backward_ms(forward, inputs):
    """(forward without autograd, forward + backward of softplus(out).sum()) in ms."""
    def both():
        F.softplus(forward()).sum().backward()
        for t in inputs:
            t.grad = None
    with torch.no_grad():
        forward_only = best_ms(forward)
    return forward_only, best_ms(both)


def largest_layer(images):
    """64 -> 64 channels, 7 -> 14: the transposed convolution in NCHW and channels-last, and as a sub-pixel
    convolution."""
    x = torch.randn(images, CHANNELS, 7, 7)
    weight = torch.randn(CHANNELS, CHANNELS, 4, 4) / 32
    last = torch.channels_last
    x_last, weight_last = x.contiguous(memory_format=last), weight.contiguous(memory_format=last)
    conv = sub_pixel_weight(weight).contiguous(memory_format=last)
    difference = (F.pixel_shuffle(F.conv2d(x_last[:64], conv, padding=1), 2)
                  - F.conv_transpose2d(x[:64], weight, stride=2, padding=1)).abs().max().item()
    rows = []
    for name, inputs, forward in [
            ("transposed conv, NCHW (the authors' layout)", (x, weight),
             lambda: F.conv_transpose2d(x, weight, stride=2, padding=1)),
            ("transposed conv, channels-last (ours)", (x_last, weight_last),
             lambda: F.conv_transpose2d(x_last, weight_last, stride=2, padding=1)),
            (f"sub-pixel: 3x3 conv to 4x64 channels + pixel_shuffle (max difference {difference:.1e})",
             (x_last, conv), lambda: F.pixel_shuffle(F.conv2d(x_last, conv, padding=1), 2))]:
        for t in inputs:
            t.requires_grad_()
        rows.append((name, *forward_and_backward_ms(forward, inputs)))
    return rows


def last_layer(images):
    """64 -> 1 channel, 14 -> 28: the transposed convolution, and a matmul to the 16 taps + F.fold."""
    x = torch.randn(images, CHANNELS, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = (torch.randn(CHANNELS, 1, 4, 4) / 32).contiguous(memory_format=torch.channels_last).requires_grad_()

    def fold():
        taps = x.permute(0, 2, 3, 1).reshape(images, 14 * 14, CHANNELS) @ weight.reshape(CHANNELS, 16)
        return F.fold(taps.transpose(1, 2), (28, 28), 4, stride=2, padding=1)
    with torch.no_grad():
        difference = (fold() - F.conv_transpose2d(x, weight, stride=2, padding=1)).abs().max().item()
    return [("transposed conv, channels-last (ours)", *forward_and_backward_ms(
                lambda: F.conv_transpose2d(x, weight, stride=2, padding=1), (x, weight))),
            (f"matmul to 16 taps + F.fold (max difference {difference:.1e})",
             *forward_and_backward_ms(fold, (x, weight)))]


def decoder_bias_ms(images):
    """Our decoder in training mode (4 transposed convolutions, 3 BatchNorm + ReLU) on `images` 2x2 maps,
    forward and backward, with torch's nn.ConvTranspose2d (the bias inside oneDNN's convolution) and with
    ours (the same weights, the bias added after): (ms, ms, whether the outputs are equal bit for bit)."""
    torch.manual_seed(0)
    ours = OmniglotGMVAE().decoder
    torchs = torch.nn.Sequential(*(torch.nn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                                            m.padding) if isinstance(m, ConvTranspose2d) else m
                                   for m in ours)).to(memory_format=torch.channels_last)
    torchs.load_state_dict(ours.state_dict())
    maps = torch.randn(images, CHANNELS, 2, 2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        equal = torch.equal(ours(maps), torchs(maps))
    return (forward_and_backward_ms(lambda: torchs(maps), list(torchs.parameters()))[1],
            forward_and_backward_ms(lambda: ours(maps), list(ours.parameters()))[1], equal)


def relu_backward_ms(images):
    """threshold_backward (ReLU's backward) on tensors of the decoder's largest activation."""
    last = torch.channels_last
    output = torch.randn(images, CHANNELS, 14, 14).relu_().contiguous(memory_format=last)
    grad = torch.randn(images, CHANNELS, 14, 14).contiguous(memory_format=last)
    return best_ms(lambda: torch.ops.aten.threshold_backward(grad, output, 0))


def eval_encoder_ms(images):
    """Our Omniglot encoder in evaluation mode on `images` drawings, layer by layer (the training order) and
    pooling first (ConvEncoder.forward): (ms, ms, whether the features are equal bit for bit)."""
    torch.manual_seed(0)
    encoder = OmniglotGMVAE().encoder.eval()
    x = omniglot_items(images)
    with torch.inference_mode():
        equal = torch.equal(torch.nn.Sequential.forward(encoder, x), encoder(x))
        return best_ms(lambda: torch.nn.Sequential.forward(encoder, x)), best_ms(lambda: encoder(x)), equal


def noise_draw_ms(episodes=4, items=80, samples=32, latent=64):
    """The MC noise of a prediction (EpisodeRandom.randn, one stream per episode) on one thread and on
    torch's threads: (ms, ms, whether the numbers are equal)."""
    def draw():
        return EpisodeRandom.for_episodes(range(episodes), 0).randn(episodes, items, samples, latent)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one_thread, serial = best_ms(draw), draw()
    torch.set_num_threads(threads)
    return one_thread, best_ms(draw), torch.equal(serial, draw())


def prediction_profile():
    """Top operators of 5 of our Omniglot predictions (4 episodes, 5-way 1-shot, 15 queries, S=32)."""
    torch.manual_seed(0)
    run = gmvae_predict(OmniglotGMVAE(), omniglot_items, 4, 32, torch.device("cpu"), False)
    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=6400, help="decoder images of the layer timings (S=8 at B=4 M=200)")
    p.add_argument("--prediction-only", action="store_true",
                   help="only the evaluation-mode encoder, the noise draw and the prediction profile")
    args = p.parse_args()
    cpu_memory.set_up()
    resolve_device("cpu")  # as every command on the CPU: the block arena
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.prediction_only:
        for title, rows in [(f"Largest decoder layer, {args.images} images", largest_layer(args.images)),
                            (f"Last decoder layer, {args.images} images", last_layer(args.images))]:
            print(f"\n{title}\n\n| variant | forward ms | forward + backward ms |\n|---|---|---|")
            for name, forward, both in rows:
                print(f"| {name} | {forward:.0f} | {both:.0f} |")
        torchs, ours, equal = decoder_bias_ms(args.images)
        print(f"\nOur decoder in training mode, {args.images} images, forward + backward: torch's ConvTranspose2d "
              f"{torchs:.0f} ms, ours (bias added after) {ours:.0f} ms; outputs equal bit for bit: {equal}")
        print(f"\nReLU's backward alone on 25600 x 64 x 14 x 14 (the default step's largest activation): "
              f"{relu_backward_ms(25600):.0f} ms")
    layers, pooled, equal = eval_encoder_ms(320)
    print(f"\nOur Omniglot encoder in evaluation mode, 320 drawings (a prediction's 4 episodes): layer by layer "
          f"{layers:.1f} ms, pooling first {pooled:.1f} ms; features equal bit for bit: {equal}")
    one_thread, threads, equal = noise_draw_ms()
    print(f"\nIts MC noise (4 episodes x 80 items x S=32 x D=64 normals, one stream per episode): one thread "
          f"{one_thread:.1f} ms, {torch.get_num_threads()} threads {threads:.1f} ms; numbers equal: {equal}")
    print("\nOur Omniglot prediction, S=32, 5 calls\n")
    print(prediction_profile())


if __name__ == "__main__":
    main()
