"""Batch-level augmentation and test-time augmentation, as tensor ops on whole batches.

Each image in a batch gets its own random rotation and shift from one `affine_grid` +
`grid_sample` call, so augmenting costs a few batched kernels, not a Python loop per sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, max_degrees: float, max_shift: float,
                  generator: torch.Generator | list[torch.Generator] | None = None
                  ) -> torch.Tensor:
    """Rotate each image by U(-max_degrees, max_degrees) and shift it by up to max_shift
    pixels in x and y. Values stay in [0, 1]; empty borders fill with 0 (black, as MNIST).

    A stack's batch (members, batch, 1, H, W) takes a generator per member: each member's
    images get the draws its generator gives it alone, and one grid_sample warps them all."""
    if isinstance(generator, list):
        members, batch = x.shape[:2]
        rand = torch.cat([torch.rand(batch, 3, generator=g) for g in generator])
        return warp(x.flatten(0, 1), rand.to(x.device) * 2 - 1, max_degrees,
                    max_shift).unflatten(0, (members, batch))
    rand = torch.rand(len(x), 3, generator=generator).to(x.device) * 2 - 1
    return warp(x, rand, max_degrees, max_shift)


def warp(x: torch.Tensor, rand: torch.Tensor, max_degrees: float,
         max_shift: float) -> torch.Tensor:
    """`random_affine`'s warp, from draws in [-1, 1): (images, 3) for angle, x and y shift."""
    height, width = x.shape[-2:]
    angle = rand[:, 0] * math.radians(max_degrees)
    # affine_grid works in [-1, 1] coordinates: a shift of s pixels is 2 s / size
    tx, ty = rand[:, 1] * 2 * max_shift / width, rand[:, 2] * 2 * max_shift / height
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Whole-pixel shift with zero fill."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def tta_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Log of the mean softmax over the image and its four one-pixel shifts."""
    probs = sum(model(shift(x, dx, dy)).softmax(dim=-1) for dx, dy in TTA_SHIFTS)
    return (probs / len(TTA_SHIFTS)).log()
