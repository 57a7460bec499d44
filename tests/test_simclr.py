"""SimCLR augmentations, encoder, NT-Xent loss and the data check's thumbnails, against their definitions."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simclr.augment import (IMAGENET_MEAN, IMAGENET_STD, JITTER_OPS, AugmentParams, SimCLRAugment,
                            adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, eval_transform,
                            hflip, hsv_to_rgb, normalize, random_resized_crop_params, resize, resized_crop,
                            rgb_to_grayscale, rgb_to_hsv, to_float, two_views)
from simclr.data import thumbnails
from simclr.loss import nt_xent
from simclr.model import SimCLR


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def unnormalize(x):
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x * std + mean


# ---- random resized crop -------------------------------------------------------------------------

def test_crop_params_within_ranges():
    H, W, n = 84, 84, 20000
    top, left, h, w = (t.double() for t in random_resized_crop_params(n, H, W, generator()))
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all() and (h >= 1).all() and (w >= 1).all()
    # h, w are within 0.5 of the continuous sqrt(area * r), sqrt(area / r) that meet the ranges
    assert ((h + 0.5) * (w + 0.5) >= 0.08 * H * W).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    frac = h * w / (H * W)
    assert frac.min() < 0.1 and frac.max() > 0.9  # the whole scale range is reached
    ratio = w / h
    assert ratio.min() < 0.8 and ratio.max() > 1.25


def test_crop_params_deterministic():
    a = random_resized_crop_params(100, 84, 84, generator(3))
    b = random_resized_crop_params(100, 84, 84, generator(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("H, W, expected", [
    (10, 1000, (0, (1000 - 13) // 2, 10, 13)),  # too wide: full height, width round(10 * 4/3)
    (1000, 10, ((1000 - 13) // 2, 0, 13, 10)),  # too tall: full width, height round(10 / (3/4))
])
def test_crop_params_fallback_centre_crop(H, W, expected):
    # no box of area >= 0.08 H W with ratio in [3/4, 4/3] fits, so all 10 tries fail
    params = random_resized_crop_params(50, H, W, generator())
    for t, e in zip(params, expected):
        assert (t == e).all()


def quadrant_image():
    """(1, 3, 84, 84) with a constant colour in each 42 x 42 quadrant."""
    colours = torch.tensor([[[0.1, 0.2, 0.3], [0.9, 0.0, 0.5]], [[0.4, 0.7, 1.0], [0.6, 0.6, 0.0]]])
    img = colours.permute(2, 0, 1).repeat_interleave(42, 1).repeat_interleave(42, 2)
    return img.unsqueeze(0), colours


def box(*values):
    return tuple(torch.tensor([v]) for v in values)


def test_resized_crop_full_box_is_identity():
    x = torch.rand(2, 3, 84, 84, generator=generator())
    full = tuple(torch.tensor([v, v]) for v in (0, 0, 84, 84))
    torch.testing.assert_close(resized_crop(x, *full, 84), x, atol=1e-5, rtol=0)


def test_resized_crop_quadrant_keeps_its_colour():
    img, colours = quadrant_image()
    for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        out = resized_crop(img, *box(42 * i, 42 * j, 42, 42), 84)
        expected = colours[i, j].view(1, 3, 1, 1).expand_as(out)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_resized_crop_matches_crop_then_interpolate():
    # torchvision's resized_crop = crop, then bilinear resize with align_corners=False
    x = torch.rand(6, 3, 84, 84, generator=generator(1))
    top, left, h, w = random_resized_crop_params(6, 84, 84, generator(2))
    out = resized_crop(x, top, left, h, w, 84)
    for k in range(6):
        crop = x[k:k + 1, :, top[k]:top[k] + h[k], left[k]:left[k] + w[k]]
        ref = F.interpolate(crop, size=(84, 84), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[k:k + 1], ref, atol=1e-5, rtol=0)


def test_resize_smaller_edge():
    x = torch.rand(2, 3, 100, 150)
    assert resize(x, 84).shape == (2, 3, 84, 126)
    y = torch.rand(2, 3, 84, 84)
    assert resize(y, 84) is y


# ---- colour and geometry ops ---------------------------------------------------------------------

def pixel(*rgb):
    return torch.tensor(rgb).view(1, 3, 1, 1)


def test_hue_red_to_green_and_known_hsv():
    red, green, blue = pixel(1.0, 0.0, 0.0), pixel(0.0, 1.0, 0.0), pixel(0.0, 0.0, 1.0)
    torch.testing.assert_close(adjust_hue(red, 1 / 3), green, atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(red, -1 / 3), blue, atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(pixel(1.0, 0.5, 0.0), 0.25), green, atol=1e-6, rtol=0)  # orange
    torch.testing.assert_close(rgb_to_hsv(pixel(0.0, 0.0, 0.5)), pixel(2 / 3, 1.0, 0.5))
    torch.testing.assert_close(rgb_to_hsv(pixel(0.5, 0.5, 0.5)), pixel(0.0, 0.0, 0.5))
    torch.testing.assert_close(hsv_to_rgb(pixel(1 / 6, 1.0, 1.0)), pixel(1.0, 1.0, 0.0))  # yellow


def test_hsv_roundtrip():
    x = torch.rand(4, 3, 16, 16, generator=generator())
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_hue_per_image_shift():
    x = pixel(1.0, 0.0, 0.0).expand(2, 3, 1, 1)
    out = adjust_hue(x, torch.tensor([1 / 3, 2 / 3]))
    expected = torch.cat([pixel(0.0, 1.0, 0.0), pixel(0.0, 0.0, 1.0)])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_brightness_contrast_saturation_blend_formulas():
    x = torch.tensor([[0.2, 0.6], [0.4, 0.8], [0.1, 0.9]]).view(1, 3, 1, 2)
    gray = torch.tensor([0.306, 0.7516]).view(1, 1, 2)  # 0.299 R + 0.587 G + 0.114 B by hand
    torch.testing.assert_close(adjust_brightness(x, 1.5), (1.5 * x).clamp(0, 1))
    torch.testing.assert_close(adjust_brightness(x, 0.5), 0.5 * x)
    m = (0.306 + 0.7516) / 2
    torch.testing.assert_close(adjust_contrast(x, 0.3), (0.3 * x + 0.7 * m).clamp(0, 1))
    torch.testing.assert_close(adjust_saturation(x, 1.8), (1.8 * x - 0.8 * gray.unsqueeze(1)).clamp(0, 1))
    torch.testing.assert_close(adjust_saturation(x, 0.0), gray.unsqueeze(1).expand_as(x))


def test_grayscale_weights():
    torch.testing.assert_close(rgb_to_grayscale(pixel(1.0, 0.0, 0.0), 3), torch.full((1, 3, 1, 1), 0.299))
    torch.testing.assert_close(rgb_to_grayscale(pixel(0.0, 1.0, 0.0)), torch.full((1, 1, 1, 1), 0.587))
    torch.testing.assert_close(rgb_to_grayscale(pixel(0.0, 0.0, 1.0)), torch.full((1, 1, 1, 1), 0.114))


def test_hflip_mirrors():
    x = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    assert torch.equal(hflip(x)[..., 0], x[..., 4]) and torch.equal(hflip(hflip(x)), x)


def test_normalize_and_to_float():
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(normalize(x), expected)
    assert torch.equal(to_float(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError):
        to_float(torch.tensor([1, 2]))


# ---- composed pipeline ---------------------------------------------------------------------------

def identity_params(n, size=84, **overrides):
    zeros = torch.zeros(n, dtype=torch.long)
    fields = dict(top=zeros, left=zeros, height=zeros + size, width=zeros + size,
                  flip=zeros.bool(), jitter=zeros.bool(), order=torch.arange(4).expand(n, 4),
                  factors=torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(n, 4), gray=zeros.bool())
    fields.update(overrides)
    return AugmentParams(**fields)


def test_apply_wires_flip_and_grayscale():
    aug = SimCLRAugment()
    x = torch.rand(4, 3, 84, 84, generator=generator())
    close = dict(atol=1e-5, rtol=0)  # compared in [0, 1]: the crop grid's rounding is ~1e-5 pixel
    torch.testing.assert_close(unnormalize(aug.apply(x, identity_params(4))), x, **close)
    flip = torch.tensor([True, False, True, False])
    out = unnormalize(aug.apply(x, identity_params(4, flip=flip)))
    torch.testing.assert_close(out, torch.where(flip.view(-1, 1, 1, 1), hflip(x), x), **close)
    gray = torch.tensor([False, True, False, True])
    out = unnormalize(aug.apply(x, identity_params(4, gray=gray)))
    torch.testing.assert_close(out, torch.where(gray.view(-1, 1, 1, 1), rgb_to_grayscale(x, 3), x), **close)


def test_apply_jitter_follows_each_images_order():
    aug = SimCLRAugment()
    n = 8
    x = torch.rand(n, 3, 84, 84, generator=generator())
    g = generator(5)
    order = torch.rand(n, 4, generator=g).argsort(dim=1)
    factors = torch.stack([0.2 + 1.6 * torch.rand(n, generator=g) for _ in range(3)]
                          + [0.4 * torch.rand(n, generator=g) - 0.2], dim=1)
    jitter = torch.arange(n) % 4 != 0
    out = aug.apply(x, identity_params(n, jitter=jitter, order=order, factors=factors))
    cropped = unnormalize(aug.apply(x, identity_params(n)))  # same crop rounding as `out`
    for k in range(n):
        y = cropped[k:k + 1]
        if jitter[k]:
            for op_idx in order[k]:
                y = JITTER_OPS[op_idx](y, factors[k, op_idx].item())
        torch.testing.assert_close(unnormalize(out[k:k + 1]), y, atol=1e-5, rtol=0)


def test_random_ops_hit_their_probabilities():
    p = SimCLRAugment().sample(2000, 84, 84, generator())
    assert abs(p.flip.float().mean() - 0.5) < 0.05
    assert abs(p.jitter.float().mean() - 0.8) < 0.05
    assert abs(p.gray.float().mean() - 0.2) < 0.05
    f = p.factors
    assert (f[:, :3] >= 0.2).all() and (f[:, :3] <= 1.8).all() and (f[:, 3].abs() <= 0.2).all()
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(2000, 4))
    # every op takes every position about equally often
    counts = F.one_hot(p.order, 4).sum(0).float() / 2000
    assert (counts - 0.25).abs().max() < 0.05


def test_pipeline_grayscale_rate_in_output():
    aug = SimCLRAugment(size=8)
    x = torch.rand(2000, 3, 8, 8, generator=generator())
    out = unnormalize(aug(x, generator(1)))
    is_gray = (out.amax(1) - out.amin(1)).amax(dim=(1, 2)) < 1e-5
    assert abs(is_gray.float().mean() - 0.2) < 0.05


def test_two_views_shape_finite_deterministic_and_different():
    x = torch.randint(0, 256, (6, 3, 84, 84), dtype=torch.uint8, generator=generator())
    v1, v2 = two_views(x, generator(7))
    w1, w2 = two_views(x, generator(7))
    assert v1.shape == v2.shape == (6, 3, 84, 84) and v1.dtype == torch.float32
    assert torch.isfinite(v1).all() and torch.isfinite(v2).all()
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert not torch.allclose(v1, v2)
    u = unnormalize(v1)
    assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5


def test_two_views_resizes_larger_input():
    x = torch.randint(0, 256, (3, 3, 100, 130), dtype=torch.uint8, generator=generator())
    v1, v2 = two_views(x, generator())
    assert v1.shape == v2.shape == (3, 3, 84, 84)


def test_eval_transform_is_resize_and_normalize():
    x = torch.randint(0, 256, (2, 3, 84, 84), dtype=torch.uint8, generator=generator())
    torch.testing.assert_close(eval_transform(x), normalize(x.float() / 255))


# ---- loss and model ------------------------------------------------------------------------------

def naive_nt_xent(z1, z2, temperature):
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    total = 0.0
    for a in range(n2):
        pos = (a + n2 // 2) % n2
        sims = [torch.dot(z[a], z[k]) / (z[a].norm() * z[k].norm()) / temperature for k in range(n2)]
        denom = sum(math.exp(sims[k]) for k in range(n2) if k != a)
        total += -math.log(math.exp(sims[pos]) / denom)
    return total / n2


def test_nt_xent_matches_naive_formula():
    g = generator()
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for t in (0.5, 0.1):
        assert abs(nt_xent(z1, z2, t).item() - naive_nt_xent(z1, z2, t)) < 1e-5


def test_nt_xent_lower_for_aligned_views():
    g = generator()
    z1 = torch.randn(64, 16, generator=g)
    aligned = nt_xent(z1, z1 + 0.05 * torch.randn(64, 16, generator=g))
    unrelated = nt_xent(z1, torch.randn(64, 16, generator=g))
    assert aligned < unrelated


def test_encoder_parameter_count_and_shapes():
    model = SimCLR()
    assert sum(p.numel() for p in model.encoder.parameters()) == 150_144
    x = torch.randn(3, 3, 84, 84)
    assert model.encoder(x).shape == (3, 256)
    z = model(x)
    assert z.shape == (3, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    nt_xent(z, model(x.flip(-1))).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_thumbnails_are_the_exact_means_of_4x4_pixel_blocks():
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 84, 84, 3), np.uint8)
    means = images.reshape(2, 3, 21, 4, 21, 4, 3).mean((3, 5))  # float64
    assert thumbnails(images).dtype == np.float32 and np.array_equal(thumbnails(images), means.astype(np.float32))
