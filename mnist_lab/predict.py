"""Classify digit images of any size: `mnist-lab predict IMAGE... --run RUN_ID [--json]`.

Images are brought to MNIST's form the way the dataset was made: grayscale, white digit on
black (dark-on-light drawings are inverted), the digit's bounding box scaled to fit 20x20 with
its aspect kept, then placed in a 28x28 field so that its centre of mass sits at the centre.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


MAX_PIXELS = 40_000_000  # three 12-megapixel phone photos; a decompression bomb is refused
WORKING_SIDE = 1024  # larger images are shrunk first: the digit ends up 20 pixels tall anyway


class ImageError(ValueError):
    """A file is not a usable digit image; the message names the file."""


def to_mnist(path: Path) -> torch.Tensor:
    """A (28, 28) float tensor in [0, 1], white digit on black, centred by mass."""
    import numpy as np
    import torch
    from PIL import Image

    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # checked below, with sizes
    try:
        with Image.open(path) as image:  # reads the header only: the size is known before decoding
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


def classify(model: torch.nn.Module, images: torch.Tensor, top: int = 3) -> list[list[tuple]]:
    """Top-k (digit, probability) for each (28, 28) image."""
    import torch

    with torch.inference_mode():
        probs = model(images.unsqueeze(1)).softmax(dim=1)
    values, digits = probs.topk(top, dim=1)
    return [list(zip(d.tolist(), v.tolist())) for d, v in zip(digits, values)]


def predict(args: argparse.Namespace) -> int:
    from mnist_lab.registry import ModelSourceError, load_model

    try:
        model = load_model(args.run, args.model, args.checkpoint, args.config, args.uri)
    except ModelSourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results, failures = [], 0
    for name in args.images:
        try:
            image = to_mnist(Path(name))
        except ImageError as err:
            failures += 1
            print(f"error: {err}", file=sys.stderr)
            results.append({"file": name, "error": str(err)})
            continue
        top3 = classify(model, image.unsqueeze(0))[0]
        results.append({"file": name, "prediction": top3[0][0],
                        "top3": [{"digit": d, "probability": round(p, 6)} for d, p in top3]})
        if not args.json:
            ranked = ", ".join(f"{d} ({p:.1%})" for d, p in top3)
            print(f"{name}: {top3[0][0]}   top-3: {ranked}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failures else 0


def add_parser(commands) -> None:
    parser = commands.add_parser("predict", help="classify digit images (PNG, JPEG, ...)",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_ID", help="the best model of an MLflow run")
    source.add_argument("--model", metavar="models:/NAME/VERSION", help="a registered model")
    source.add_argument("--checkpoint", metavar="best.pth", help="a state_dict; needs --config")
    parser.add_argument("--config", metavar="config.yaml", help="the run's resolved config")
    parser.add_argument("--uri", default=None, help="tracking URI (default as run.py)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=predict)
