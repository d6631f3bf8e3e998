"""Stacked trials against one run at a time, on the bundled data:
`python benchmarks/stacked.py [--device cuda] [--configs 64 --epochs 1 --limit 0] [--sweeps]`

1. The loop: an lr x dropout grid of `--configs` configurations of each model, trained for
   `--epochs` epochs one after another (`loop.fit` on each run's state), then as one stack
   (`loop.fit` on a `stacking.Stack`), in this process, in turn; the figure is trained epochs
   per second, and the ratio of the two. Target on a GPU: at least 20x for 64 configurations.
2. With `--sweeps`: `experiment=lr_dropout` (18 jobs) end to end through run.py with the basic,
   parallel and stacked launchers, in turn, each into its own folder with tracking off; the
   figure is the wall time. On a GPU also `experiment=seeds` stacked (target: under 60 s on an
   H200; 437 s with 10 parallel jobs).

Written to benchmarks/results/stacked.json and .md. CUDA graphs are not measured: no device
was lent while stacking was built (docs/stacking.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnist_lab.context import JobContext  # noqa: E402
from mnist_lab.data import load_mnist, member_data  # noqa: E402
from mnist_lab.job import Job  # noqa: E402
from mnist_lab.loop import Recipe, fit  # noqa: E402
from mnist_lab.preflight import compose_job  # noqa: E402
from mnist_lab.stacking import Member, Stack  # noqa: E402

DROPOUTS = (0.0, 0.2, 0.5)


def grid(configs: int) -> list[tuple[float, float]]:
    """`configs` (lr, dropout) pairs: learning rates log-spaced over 1e-4..1e-2 per dropout."""
    per = -(-configs // len(DROPOUTS))
    rates = torch.logspace(-4, -2, per).tolist()
    return [(lr, p) for lr in rates for p in DROPOUTS][:configs]


def states(model: str, pairs, data, device, batch: int):
    out = []
    for i, (lr, p) in enumerate(pairs):
        job = Job(compose_job([f"model={model}", f"optim.lr={lr}", f"dropout.p={p}", f"seed={i}",
                               f"train.batch_size={batch}", "tracking=off"]), JobContext())
        job.data, job.resume_state = data, None
        out.append(job.build(device))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loop_figures(model: str, args, data, device) -> dict:
    pairs = grid(args.configs)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size)
    on_device = data.to(device)
    solo = states(model, pairs, data, device, args.batch_size)
    sync(device)
    start = time.perf_counter()
    for state in solo:
        fit(state, on_device, recipe)
    sync(device)
    alone = time.perf_counter() - start
    stacked = states(model, pairs, data, device, args.batch_size)
    shared = member_data([data] * len(pairs), device)
    sync(device)
    start = time.perf_counter()
    fit(Stack([Member(s) for s in stacked]), shared, recipe)
    sync(device)
    together = time.perf_counter() - start
    epochs = len(pairs) * args.epochs
    return {"configs": len(pairs), "epochs_each": args.epochs, "alone_seconds": alone,
            "stacked_seconds": together, "alone_epochs_per_s": epochs / alone,
            "stacked_epochs_per_s": epochs / together, "speedup": alone / together}


def sweep_seconds(args, launcher: str, experiment: str, folder: Path) -> float:
    extra = ["launcher.n_jobs=2"] if launcher == "parallel" else []
    command = [sys.executable, str(ROOT / "run.py"), f"experiment={experiment}",
               f"launcher={launcher}", *extra, "tracking=off", "plots=false",
               "train.progress=off", f"device={args.device}", f"hydra.sweep.dir={folder}/sweep",
               f"checkpoint.dir={folder}/ck", *args.sweep_overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return names[0] if names else platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="ffnn,cnn")
    parser.add_argument("--configs", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--limit", type=int, default=0, help="training images (0: all 48,000)")
    parser.add_argument("--sweeps", action="store_true")
    parser.add_argument("--sweep-overrides", nargs="*", default=[])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_flush_denormal(True)
    data = load_mnist(ROOT / "data" / "mnist", 12_000, 0, args.limit or None)
    figures = {"machine": {"cpu": cpu_name(),
                           "cores": torch.get_num_threads(), "device": str(device),
                           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                           else None, "torch": torch.__version__},
               "loop": {}, "sweeps": {}}
    lines = [f"# Stacked trials ({figures['machine']})", "",
             "| model | configs x epochs | one at a time (epochs/s) | stacked (epochs/s) | "
             "speedup |", "| --- | --- | --- | --- | --- |"]
    for model in args.models.split(","):
        got = figures["loop"][model] = loop_figures(model, args, data, device)
        lines.append(f"| {model} | {got['configs']} x {got['epochs_each']} | "
                     f"{got['alone_epochs_per_s']:.3f} | {got['stacked_epochs_per_s']:.3f} | "
                     f"{got['speedup']:.2f}x |")
        print(lines[-1], flush=True)
    if args.sweeps:
        lines += ["", "| sweep | launcher | wall seconds |", "| --- | --- | --- |"]
        runs = [("lr_dropout", launcher) for launcher in ("basic", "parallel", "stacked")]
        if device.type == "cuda":
            runs += [("seeds", "parallel"), ("seeds", "stacked")]
        for experiment, launcher in runs:
            with tempfile.TemporaryDirectory() as folder:
                seconds = sweep_seconds(args, launcher, experiment, Path(folder))
            figures["sweeps"][f"{experiment}/{launcher}"] = seconds
            lines.append(f"| {experiment} {' '.join(args.sweep_overrides)} | {launcher} | "
                         f"{seconds:.1f} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stacked.json").write_text(json.dumps({**figures, "args": vars(args)}, indent=2))
    (out / "stacked.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
