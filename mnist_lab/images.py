"""Digit images as users have them (any size, either polarity, grayscale or colour), brought to
MNIST's form the way the dataset was made: grayscale, white digit on black (dark-on-light drawings
are inverted), the digit's bounding box scaled to fit 20x20 with its aspect kept, then placed in a
28x28 field so that its centre of mass sits at the centre. `predict` and the served model (see
`served`) both read images here, so they classify a file alike.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch


MAX_PIXELS = 40_000_000  # three 12-megapixel phone photos; a decompression bomb is refused
WORKING_SIDE = 1024  # larger images are shrunk first: the digit ends up 20 pixels tall anyway


class ImageError(ValueError):
    """A file is not a usable digit image; the message names the file."""


def to_mnist(source: Path | bytes, name: str | None = None) -> torch.Tensor:
    """A (28, 28) float tensor in [0, 1], white digit on black, centred by mass, from an image
    file or its bytes (`name` then says which image an error is about)."""
    import numpy as np
    from PIL import Image

    path = name or (f"a {len(source)}-byte image" if isinstance(source, bytes) else source)
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # checked below, with sizes
    try:
        # Image.open reads the header only: the size is known before decoding
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{path}: {width}x{height} pixels is more than the "
                                 f"{MAX_PIXELS:,} predict reads; scale it down first")
            image.draft("L", (WORKING_SIDE, WORKING_SIDE))  # JPEG: decode at a reduced scale
            small = image.convert("L")
        small.thumbnail((WORKING_SIDE, WORKING_SIDE))
        gray = np.asarray(small, dtype=np.float32) / 255.0
    except ImageError:
        raise
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, ... by format
        raise ImageError(f"{path}: not a readable image ({err.__class__.__name__})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 0.5:  # dark digit on a light page
        gray, background = 1.0 - gray, 1.0 - background
    ink = np.clip((gray - background) / max(1.0 - background, 1e-6), 0.0, 1.0)
    rows, cols = np.nonzero(ink > 0.1)
    if len(rows) == 0:
        raise ImageError(f"{path}: no digit found (the image is blank)")
    digit = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    height, width = digit.shape
    scale = 20.0 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize(
        size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    field = np.zeros((28, 28), dtype=np.float32)
    mass = resized.sum()
    ys, xs = np.indices(resized.shape)
    cy, cx = (ys * resized).sum() / mass, (xs * resized).sum() / mass
    top = int(np.clip(round(14 - cy), 0, 28 - resized.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - resized.shape[1]))
    field[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return torch.from_numpy(np.clip(field, 0.0, 1.0))


def classify(model: torch.nn.Module, images: torch.Tensor, top: int = 3) -> list[dict]:
    """For each (28, 28) image: {"prediction": digit, "top3": [{"digit", "probability"}, ...]},
    the answer of `predict --json` and of the served model alike."""
    with torch.inference_mode():
        probs = model(images.unsqueeze(1)).softmax(dim=1)
    values, digits = probs.topk(top, dim=1)
    return [{"prediction": d[0], "top3": [{"digit": digit, "probability": round(p, 6)}
                                          for digit, p in zip(d, v)]}
            for d, v in zip(digits.tolist(), values.tolist())]
