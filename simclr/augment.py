"""SimCLR augmentations of a whole batch at once, with torchvision's definitions.

Shapes: N images, C = 3 channels, H x W pixels; images are float in [0, 1] unless stated.
Every random parameter is drawn per image from a caller's `torch.Generator` (on the generator's
device, so a CPU generator gives the same views for CPU and GPU batches); the operations then run
on the batch's device without a loop over images. Unlike the PIL pipeline of the reference, the
image stays float between operations (no rounding to uint8 after each one).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def to_float(images):
    """uint8 in [0, 255] -> float in [0, 1] (as ToTensor) of the default dtype; a float batch is returned
    unchanged."""
    if images.dtype == torch.uint8:
        return images.to(torch.get_default_dtype()) / 255
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images


def resize(images, size):
    """Resize the smaller edge to `size`, keeping the aspect ratio (torchvision's Resize(int)).

    (N, C, H, W) -> (N, C, size, size * W // H) or the transpose; bilinear with antialiasing,
    as torchvision's tensor resize. An image whose smaller edge is already `size` is returned as is.
    """
    height, width = images.shape[-2:]
    short, long = min(height, width), max(height, width)
    if short == size:
        return images
    new_long = int(size * long / short)  # torchvision truncates the long edge
    out_size = (size, new_long) if height <= width else (new_long, size)
    return F.interpolate(images, size=out_size, mode="bilinear", align_corners=False, antialias=True)


def _uniform(shape, low, high, generator):
    """Uniform float64 draws in [low, high) on the generator's device."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return low + (high - low) * u


def _centre_crop_size(height, width, ratio):
    """torchvision's fallback box: the largest centred box whose aspect ratio is within `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def random_resized_crop_params(n, height, width, generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                               tries=10):
    """Boxes of torchvision's RandomResizedCrop.get_params for N images of size H x W.

    All `tries` candidates are drawn at once and each image keeps its first valid one (box inside
    the image); an image with none gets torchvision's centred fallback box.
    Returns top, left, crop_height, crop_width: (N,) int64 on the generator's device.
    """
    target_area = height * width * _uniform((n, tries), *scale, generator)
    aspect = torch.exp(_uniform((n, tries), math.log(ratio[0]), math.log(ratio[1]), generator))
    w = torch.round(torch.sqrt(target_area * aspect)).long()  # round half to even, as Python's round
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (N, tries)
    first = valid.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = valid.any(dim=1)
    fallback_h, fallback_w = _centre_crop_size(height, width, ratio)
    h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
    w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
    # randint(0, H - h + 1) as the floor of a uniform scaled to the number of positions
    top = (_uniform(n, 0, 1, generator) * (height - h + 1)).floor().long()
    left = (_uniform(n, 0, 1, generator) * (width - w + 1)).floor().long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return top, left, h, w


def _crop_grid_axis(start, length, size, extent, dtype):
    """grid_sample coordinates along one axis for boxes [start, start + length) -> (N, size).

    As torchvision's crop then bilinear resize (align_corners=False): output pixel o samples the
    source x = start + (o + 0.5) * length / size - 0.5, clamped to the box as interpolate clamps
    to the border of the cropped image.
    """
    start, length = start.to(dtype).unsqueeze(1), length.to(dtype).unsqueeze(1)  # (N, 1)
    o = torch.arange(size, device=start.device, dtype=dtype) + 0.5  # (size,)
    src = torch.minimum(torch.maximum(start + o * length / size - 0.5, start), start + length - 1)
    return (2 * src + 1) / extent - 1  # grid_sample's pixel-centre normalisation


def resized_crop(images, top, left, height, width, size):
    """Crop each image to its box and resize it bilinearly to (size, size), all in one grid_sample.

    images (N, C, H, W); top, left, height, width (N,) int -> (N, C, size, size).
    Equal to torchvision's resized_crop whenever the box is no larger than the output (always so
    for square images resized to `size`); larger boxes are sampled without antialiasing.
    """
    h_in, w_in = images.shape[-2:]
    top, left, height, width = (t.to(images.device) for t in (top, left, height, width))
    gx = _crop_grid_axis(left, width, size, w_in, images.dtype)  # (N, size)
    gy = _crop_grid_axis(top, height, size, h_in, images.dtype)
    # (N, size, size, 2): x varies along the last axis, y along the rows
    grid = torch.stack(torch.broadcast_tensors(gx.unsqueeze(1), gy.unsqueeze(2)), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def hflip(images):
    """Mirror left-right: (N, C, H, W) -> (N, C, H, W)."""
    return images.flip(-1)


def _per_image(factor, images):
    """A float or (N,) factor shaped (N or 1, 1, 1, 1) to broadcast over (N, C, H, W)."""
    return torch.as_tensor(factor, dtype=images.dtype, device=images.device).reshape(-1, 1, 1, 1)


def _blend(images, other, factor):
    """torchvision's _blend for float images: factor * images + (1 - factor) * other, clamped to [0, 1]."""
    factor = _per_image(factor, images)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def rgb_to_grayscale(images, num_output_channels=1):
    """Luma 0.299 R + 0.587 G + 0.114 B: (N, 3, H, W) -> (N, num_output_channels, H, W)."""
    r, g, b = images.unbind(dim=-3)
    gray = (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)
    return gray.expand(*images.shape[:-3], num_output_channels, *images.shape[-2:])


def adjust_brightness(images, factor):
    """Blend with black, i.e. factor * images clamped to [0, 1]; factor float or (N,)."""
    return (_per_image(factor, images) * images).clamp(0, 1)


def adjust_contrast(images, factor):
    """Blend with the mean of each image's grayscale version; factor float or (N,)."""
    mean = rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)  # (N, 1, 1, 1)
    return _blend(images, mean, factor)


def adjust_saturation(images, factor):
    """Blend with each image's grayscale version; factor float or (N,)."""
    return _blend(images, rgb_to_grayscale(images), factor)


def rgb_to_hsv(images):
    """RGB -> HSV with hue in [0, 1) turns, following torchvision's _rgb2hsv: (N, 3, H, W) -> same."""
    r, g, b = images.unbind(dim=-3)
    maxc = images.amax(dim=-3)
    minc = images.amin(dim=-3)
    eqc = maxc == minc  # gray pixels: hue and saturation 0, avoid dividing by 0
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(images):
    """HSV -> RGB: (N, 3, H, W) -> same.

    Closed form c_n = v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6 for n = 5, 3, 1
    (R, G, B), equal to torchvision's six-sector _hsv2rgb.
    """
    h, s, v = images.unsqueeze(-3).unbind(dim=-4)  # each (N, 1, H, W)
    n = torch.tensor((5.0, 3.0, 1.0), dtype=images.dtype, device=images.device).view(3, 1, 1)
    k = torch.remainder(n + 6 * h, 6)  # (N, 3, H, W)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def adjust_hue(images, shift):
    """Rotate the hue by `shift` turns (float or (N,), in [-0.5, 0.5]) in HSV space."""
    h, s, v = rgb_to_hsv(images).unbind(dim=-3)
    h = torch.remainder(h + _per_image(shift, images).squeeze(1), 1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=-3)).clamp(0, 1)


def normalize(images, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(images - mean) / std per channel: (N, C, H, W) -> (N, C, H, W)."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean) / std


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # ColorJitter's fn_idx order


@dataclass
class AugmentParams:
    """Random parameters of one view of N images; fields are (N,) unless noted."""
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool: colour jitter applied
    order: torch.Tensor  # (N, 4) int64: permutation of JITTER_OPS
    factors: torch.Tensor  # (N, 4): brightness, contrast, saturation factors and hue shift
    gray: torch.Tensor  # bool

    def to(self, device):
        """The same parameters on `device`."""
        return AugmentParams(**{k: v.to(device) for k, v in vars(self).items()})

    def rows(self, start, stop):
        """The parameters of images [start, stop)."""
        return AugmentParams(**{k: v[start:stop] for k, v in vars(self).items()})


class SimCLRAugment:
    """One SimCLR view: resize, random resized crop, flip, colour jitter, grayscale, normalise.

    size: output side (84); scale, ratio: RandomResizedCrop's area fraction and aspect-ratio range;
    flip_p, jitter_p, gray_p: probabilities of RandomHorizontalFlip, RandomApply(ColorJitter) and
    RandomGrayscale; brightness, contrast, saturation, hue: ColorJitter's strengths (factor
    uniform in [1 - x, 1 + x], hue shift uniform in [-hue, hue]); mean, std: Normalize's.
    """

    def __init__(self, size=84, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8,
                 brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, gray_p=0.2,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.scale, self.ratio = size, scale, ratio
        self.flip_p, self.jitter_p, self.gray_p = flip_p, jitter_p, gray_p
        self.jitter_ranges = [(max(0.0, 1 - x), 1 + x) for x in (brightness, contrast, saturation)]
        self.jitter_ranges.append((-hue, hue))
        self.mean, self.std = mean, std

    def sample(self, n, height, width, generator):
        """Draw the parameters of N views of H x W images (on the generator's device)."""
        def coin(p):
            return torch.rand(n, generator=generator, device=generator.device) < p

        box = random_resized_crop_params(n, height, width, generator, self.scale, self.ratio)
        flip, jitter = coin(self.flip_p), coin(self.jitter_p)
        order = torch.rand(n, 4, generator=generator, device=generator.device).argsort(dim=1)
        factors = torch.stack([_uniform(n, lo, hi, generator) for lo, hi in self.jitter_ranges], dim=1)
        return AugmentParams(*box, flip, jitter, order, factors, coin(self.gray_p))

    def apply(self, images, params):
        """Apply drawn parameters to resized float images: (N, 3, H, W) -> (N, 3, size, size)."""
        p = params.to(images.device)
        x = resized_crop(images, p.top, p.left, p.height, p.width, self.size)
        x = torch.where(p.flip.view(-1, 1, 1, 1), hflip(x), x)
        # Random order per image: in round r every image applies the op at position r of its own
        # permutation, each op run once per round on the subset of images that chose it.
        for r in range(len(JITTER_OPS)):
            for k, op in enumerate(JITTER_OPS):
                idx = torch.nonzero(p.jitter & (p.order[:, r] == k)).squeeze(1)
                x[idx] = op(x[idx], p.factors[idx, k])
        x = torch.where(p.gray.view(-1, 1, 1, 1), rgb_to_grayscale(x, 3), x)
        return normalize(x, self.mean, self.std)

    def __call__(self, images, generator):
        """uint8 or float images (N, 3, H, W) -> one augmented, normalised view (N, 3, size, size)."""
        x = resize(to_float(images), self.size)
        return self.apply(x, self.sample(x.shape[0], *x.shape[-2:], generator))


def two_views(images, generator, augment=None, share=None):
    """Two independent views of each image: (N, 3, H, W) -> two (N, 3, 84, 84) batches.

    augment: a SimCLRAugment (default: the reference's settings).  share: when the images are one
    process's rows of a larger batch (distributed.Share), the parameters of the whole batch are drawn and
    these rows used, so every image gets the views it would get in a single process.
    """
    augment = augment or SimCLRAugment()
    x = resize(to_float(images), augment.size)  # shared by both views
    total, start, stop = (len(x), 0, len(x)) if share is None else (share.total, share.start, share.stop)
    return tuple(augment.apply(x, augment.sample(total, *x.shape[-2:], generator).rows(start, stop))
                 for _ in range(2))


def eval_transform(images, size=84, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Evaluation / feature pass: resize (smaller edge to `size`) and normalise only.

    (N, 3, H, W) uint8 or float -> (N, 3, size, size) for square images.
    """
    return normalize(resize(to_float(images), size), mean, std)
