"""Classify digit images of any size: `mnist-lab predict IMAGE... --run RUN_ID [--json]`.

Images are brought to MNIST's form the way the dataset was made: grayscale, white digit on
black (dark-on-light drawings are inverted), the digit's bounding box scaled to fit 20x20 with
its aspect kept, then placed in a 28x28 field so that its centre of mass sits at the centre.
The served model (`mnist-lab serve`) prepares images the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def predict(args: argparse.Namespace) -> int:
    from mnist_lab.images import ImageError, classify, to_mnist
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
        answer = classify(model, image.unsqueeze(0))[0]
        results.append({"file": name, **answer})
        if not args.json:
            ranked = ", ".join(f"{t['digit']} ({t['probability']:.1%})" for t in answer["top3"])
            print(f"{name}: {answer['prediction']}   top-3: {ranked}")
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
