"""The report's augmentation on uint8 tensors for photos from the photo cache: the crop and flip
per photo where it is loaded (a few hundred microseconds on a small uint8 image), colour jitter
and normalisation per batch where the model runs (`finish_batch`, called from the data module's
`on_after_batch_transfer`: on the GPU when the model is there).

Random draws are torchvision's own (`RandomResizedCrop.get_params`, `ColorJitter.get_params`, a
flip at p=0.5), in the order the PIL path's `v2.Compose` makes them, so the crop boxes, flips and
jitter factors follow the same distributions (and under the same seed are the same draws). The
jitter itself is one affine colour map per photo: brightness, contrast and saturation as
torchvision defines them, hue as a rotation of the chroma plane (YIQ) by `hue` turns instead of
a shift in HSV, clamped once at the end instead of after each of the four ops (which then
commute, so the random order makes no difference). Batches are `(B, 3, H, W)` (evaluation:
`(B, V, 3, H, W)`) uint8 from the loader, the same shapes in float after `finish_batch`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torchvision import transforms as T

# torchvision's rgb_to_grayscale weights (ITU-R 601)
GRAY = (0.2989, 0.587, 0.114)
# YIQ chroma rows (I, Q); the luma row is GRAY, so a rotation of (I, Q) keeps grey levels
YIQ_CHROMA = ((0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
JITTER = (0.3, 0.3, 0.3, 0.03)  # brightness, contrast, saturation, hue of the `strong` recipe


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch ops of one photo on one thread: splitting a ~0.05 ms resize over the training
    process's threads costs more than it saves, up to 40x more on a busy 2-core CPU."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CropFlip:
    """One photo `(H, W, 3)` uint8 -> `(3, size, size)` uint8 and its jitter factors
    `(brightness, contrast, saturation, hue)` (None without jitter): a random resized crop
    (`strong`) or the centre crop (`report`), then a horizontal flip at p=0.5."""

    def __init__(self, size: int, strong: bool, crop_scale: Sequence[float] = (0.35, 1.0),
                 ratio: Sequence[float] = RATIO, jitter: Sequence[float] = JITTER) -> None:
        self.size, self.strong = size, strong
        self.scale, self.ratio = tuple(crop_scale), tuple(ratio)
        b, c, s, h = jitter
        self.ranges = ((1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h))

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with one_thread():
            return self._crop_flip(image)

    def _crop_flip(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        chw = image.permute(2, 0, 1)  # a view: channels-last strides
        if self.strong:
            top, left, h, w = T.RandomResizedCrop.get_params(chw, self.scale, self.ratio)
            crop = chw[:, top:top + h, left:left + w].unsqueeze(0)
            crop = crop.contiguous(memory_format=torch.channels_last)  # uint8 AVX2 resize path
            out = F.interpolate(crop, size=(self.size, self.size), mode="bilinear",
                                antialias=True, align_corners=False)[0]
        else:
            out = T.functional.center_crop(chw, [self.size, self.size])
        if torch.rand(1) < 0.5:
            out = out.flip(-1)
        out = out.contiguous()  # planar: the batch's float conversion and colour map stream
        if not self.strong:
            return out, None
        _, b, c, s, h = T.ColorJitter.get_params(*self.ranges)
        return out, torch.tensor([b, c, s, h], dtype=torch.float32)


def jitter_matrices(factors: torch.Tensor, gray_mean: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per photo `A (B, 3, 3)` and `o (B, 3)` with jittered = A @ rgb + o (rgb in [0, 1]), for
    factors `(B, 4)` = brightness, contrast, saturation, hue and the photo's mean grey level."""
    dev, n = factors.device, len(factors)
    b, c, s, h = (factors[:, k].view(n, 1, 1) for k in range(4))
    gray = torch.tensor(GRAY, device=dev)
    to_gray = gray.expand(3, 3)  # every row the grey weights: rgb -> (g, g, g)
    eye = torch.eye(3, device=dev)
    saturation = s * eye + (1 - s) * to_gray
    yiq = torch.cat([gray.view(1, 3), torch.tensor(YIQ_CHROMA, device=dev)])
    angle = -h.view(n) * 2 * math.pi  # the sign of torchvision's hue (red -> yellow)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(n, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    hue = torch.linalg.inv(yiq) @ rot @ yiq
    # contrast blends with the mean grey level, which brightness scales and hue and
    # saturation keep: b * (c * x + (1 - c) * mean) after (hue, saturation)
    a = b * c * (hue @ saturation)
    o = (b * (1 - c)).view(n, 1) * gray_mean.view(n, 1) * torch.ones(1, 3, device=dev)
    return a, o


def finish_batch(x: torch.Tensor, factors: torch.Tensor | None, mean: Sequence[float],
                 std: Sequence[float]) -> torch.Tensor:
    """uint8 `(..., 3, H, W)` -> float, jittered by `factors` `(B, 4)` when given, normalised
    like the PIL path's `ToDtype(scale=True)` + `Normalize(mean, std)`."""
    dev = x.device
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev)
    if factors is None:
        # the same element-wise ops as to_dtype(scale=True) + normalize: bit-identical values
        return x.to(torch.float32).mul_(1 / 255).sub_(mean_t.view(3, 1, 1)).div_(
            std_t.view(3, 1, 1))
    n = len(x)
    pixels = x.reshape(n, 3, -1).to(torch.float32)  # (B, 3, H*W)
    gray_mean = (pixels.mean(dim=2) @ torch.tensor(GRAY, device=dev)) / 255
    a, o = jitter_matrices(factors.to(dev, torch.float32), gray_mean)
    # clamp(A x/255 + o, 0, 1) then normalise, folded into one affine map and a clamp
    a = a / (255 * std_t.view(1, 3, 1))
    o = (o - mean_t) / std_t
    y = torch.bmm(a, pixels).add_(o.unsqueeze(2))  # (baddbmm measured slower)
    low = [-m / s for m, s in zip(mean, std, strict=True)]  # [0, 1] normalised, per channel
    high = [(1 - m) / s for m, s in zip(mean, std, strict=True)]
    if len(set(low)) == 1 and len(set(high)) == 1:  # scalars: a faster clamp, no device sync
        y.clamp_(low[0], high[0])
    else:
        y = torch.clamp(y, torch.tensor(low, device=dev).view(3, 1),
                        torch.tensor(high, device=dev).view(3, 1))
    return y.view(x.shape)
