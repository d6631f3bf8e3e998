"""Speed of the lab on this machine, as ratios measured side by side in one process.

    python benchmarks/bench.py [--quick] [--out benchmarks/results] [--device cuda]
    mnist-lab bench [--quick]

Prints a Markdown table and writes `bench.json` and `bench.md` to --out. Measures: data load
time; training samples/s of both models at batch 20, 128 and 512 with the share of this
machine's fp32 peak (measured as the best large-matmul rate); the notebook's own pipeline
(torchvision MNIST + ToTensor + SubsetRandomSampler + DataLoader) against the lab's loop, per
epoch; tracking on against off; start-up of `run.py --help` and of a config error; and the
`speedrun` experiment over seeds. `--quick` shortens every measurement (about a minute) and
skips the speedrun seeds but one.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnist_lab.data import load_mnist  # noqa: E402
from mnist_lab.models import CNN, FFNN  # noqa: E402
from mnist_lab.weight_init import normal  # noqa: E402

DATA = ROOT / "data" / "mnist"
TRAIN_IMAGES = 48_000
# name: (the lab's model as conf/model/NAME.yaml builds it, the notebook's own module order).
# The lab's CNN max-pools before its ReLU: the same outputs and gradients, less work.
MODELS = {"ffnn": (FFNN, FFNN), "cnn": (partial(CNN, pool_first=True), CNN)}


def forward_flops(model: nn.Module) -> int:
    """Multiply-adds x 2 of every conv and Linear layer for one 28x28 image."""
    flops, side = 0, 28
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            flops += 2 * side * side * layer.in_channels * layer.out_channels * k
        elif isinstance(layer, nn.MaxPool2d):
            side //= 2
        elif isinstance(layer, nn.Linear):
            flops += 2 * layer.in_features * layer.out_features
    return flops


def training_flops(model: nn.Module) -> int:
    """Forward + backward: backward costs two forwards (input and weight gradients)."""
    return 3 * forward_flops(model)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measured_peak(seconds: float, device: torch.device) -> float:
    """Best fp32 FLOP/s of a large matmul on all torch threads (or the GPU, TF32 off as torch
    leaves it): what the hardware reaches."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    best, end = 0.0, time.perf_counter() + seconds
    torch.mm(a, b)
    synchronize(device)
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def lab_step_rate(model_cls, batch: int, steps: int, device: torch.device) -> float:
    """Samples/s of the lab's training step: uint8 slice -> float, fused Adam, no host sync."""
    torch.manual_seed(0)
    model = model_cls()
    normal(model)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    images = torch.randint(0, 256, (batch * 8, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch * 8,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    total = torch.zeros((), device=device)

    def step(i: int) -> None:
        nonlocal total
        idx = slice((i % 8) * batch, (i % 8 + 1) * batch)
        x = images[idx].unsqueeze(1).float().div_(255)
        loss = loss_fn(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()

    for i in range(5):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    total.item()
    return steps * batch / (time.perf_counter() - start)


def notebook_step_rate(model_cls, steps: int, raw_root: Path, device: torch.device) -> float:
    """The notebook's pipeline, verbatim in spirit: per-sample ToTensor through a DataLoader,
    each batch moved to the GPU when there is one (its `use_cuda`)."""
    from torch.utils.data import DataLoader
    from torch.utils.data.sampler import SubsetRandomSampler
    from torchvision import datasets, transforms

    train_data = datasets.MNIST(str(raw_root), train=True, download=False,
                                transform=transforms.Compose([transforms.ToTensor()]))
    indices = torch.randperm(len(train_data)).tolist()
    loader = DataLoader(train_data, batch_size=20, sampler=SubsetRandomSampler(indices[12000:]),
                        num_workers=0)
    torch.manual_seed(0)
    model = model_cls()
    normal(model)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    model.train()
    start, train_loss = time.perf_counter(), 0.0
    for i, (images, labels) in enumerate(loader):
        if i == steps:
            break
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        train_loss += loss.item()
    return steps * 20 / (time.perf_counter() - start)


def torchvision_layout(tmp: Path) -> Path:
    """The bundled files, decompressed where torchvision's MNIST class looks for them."""
    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in DATA.glob("*.gz"):
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    return tmp


def timed_command(args: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, timeout=300)
        best = min(best, time.perf_counter() - start)
    return best


def run_py(overrides: list[str], out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides,
                             f"hydra.run.dir={out}", "train.progress=off"],
                            cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"run.py {' '.join(overrides)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start, (out / "report.txt").read_text()


def accuracy_of(report: str) -> float:
    return float(report.split("overall:")[1].split("%")[0]) / 100


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute, for CI")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every measurement on it)")
    args = parser.parse_args(argv)
    quick = args.quick
    device = torch.device(args.device)
    on_device = f"device={args.device}"
    torch.set_flush_denormal(True)  # as job.run does
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "quick": quick, "device": args.device}}
    if device.type == "cuda":
        figures["machine"]["gpu"] = torch.cuda.get_device_name(device)
    rows: list[tuple[str, str]] = []

    start = time.perf_counter()
    load_mnist(DATA, 12000, 0)
    figures["data_load_seconds"] = time.perf_counter() - start
    rows.append(("data load (read, verify SHA-256, split)", f"{figures['data_load_seconds']:.2f} s"))

    peak = measured_peak(1.0 if quick else 3.0, device)
    figures["peak_gflops"] = peak / 1e9
    rows.append((f"fp32 peak (best matmul, {args.device})", f"{peak / 1e9:.0f} GFLOP/s"))

    for name, (model_cls, _) in MODELS.items():
        flops = training_flops(model_cls())
        figures[f"{name}_train_mflop_per_sample"] = flops / 1e6
        for batch in (20, 128, 512):
            steps = max(10, (300 if quick else 1500) * 20 // batch)
            rate = lab_step_rate(model_cls, batch, steps, device)
            share = rate * flops / peak
            figures[f"{name}_bs{batch}"] = {"samples_per_second": rate, "share_of_peak": share}
            rows.append((f"{name} training, batch {batch}",
                         f"{rate:,.0f} samples/s, {100 * share:.0f}% of peak"))

    with tempfile.TemporaryDirectory() as tmp:
        raw_root = torchvision_layout(Path(tmp))
        for name, (model_cls, notebook_cls) in MODELS.items():
            steps = 150 if quick else 1200
            notebook = notebook_step_rate(notebook_cls, steps, raw_root, device)
            lab = lab_step_rate(model_cls, 20, steps, device)
            figures[f"{name}_epoch"] = {"notebook_seconds": TRAIN_IMAGES / notebook,
                                        "lab_seconds": TRAIN_IMAGES / lab,
                                        "speedup": lab / notebook}
            rows.append((f"{name} epoch at batch 20: notebook pipeline vs lab loop",
                         f"{TRAIN_IMAGES / notebook:.1f} s vs {TRAIN_IMAGES / lab:.1f} s "
                         f"({lab / notebook:.1f}x)"))

        runs = Path(tmp) / "runs"
        store = f"tracking.uri=sqlite:///{runs}/mlflow.db"
        run_py(["model=ffnn", "train.epochs=1", "data.limit=1000", store, on_device],
               runs / "warm")  # the store
        # a short run shows the fixed cost per run; the study's FFNN run (its shortest) the share
        cases = {"short": ["model=ffnn", "train.epochs=2", on_device,
                           "data.limit=12000" if quick else "data.limit=48000"]}
        if not quick:
            cases["study_ffnn"] = ["model=ffnn", on_device]
        figures["tracking"] = {}
        for case, overrides in cases.items():
            off, _ = run_py([*overrides, "tracking=off"], runs / f"{case}-off")
            on, _ = run_py([*overrides, "tracking=local", store], runs / f"{case}-on")
            figures["tracking"][case] = {"overrides": overrides, "off_seconds": off,
                                         "on_seconds": on, "ratio": on / off}
            rows.append((f"tracking on vs off ({' '.join(overrides)}, whole process)",
                         f"{on:.1f} s vs {off:.1f} s ({100 * (on / off - 1):+.1f}%, "
                         f"{on - off:+.1f} s)"))

        help_s = timed_command(["run.py", "--help"], 3)
        error_s = timed_command(["run.py", "optim.lr=-1"], 3)
        figures["startup"] = {"help_seconds": help_s, "config_error_seconds": error_s}
        rows.append(("start-up: run.py --help / a config error", f"{help_s:.2f} s / {error_s:.2f} s"))

        if (ROOT / "experiments" / "speedrun.yaml").is_file():
            results = []
            for seed in (0,) if quick else (0, 1, 2):
                seconds, report = run_py(["experiment=speedrun", f"seed={seed}", "tracking=off",
                                          on_device],
                                         runs / f"speed{seed}")
                results.append({"seed": seed, "seconds": seconds, "test_acc": accuracy_of(report)})
            mean_acc = sum(r["test_acc"] for r in results) / len(results)
            mean_s = sum(r["seconds"] for r in results) / len(results)
            cnn_epoch = figures["cnn_epoch"]["notebook_seconds"]
            figures["speedrun"] = {"runs": results, "mean_test_acc": mean_acc,
                                   "mean_seconds": mean_s, "notebook_cnn_epoch_seconds": cnn_epoch}
            rows.append((f"speedrun, {len(results)} seed(s), whole process",
                         f"{mean_s:.1f} s ({100 * mean_s / cnn_epoch:.0f}% of one notebook CNN "
                         f"epoch), test acc {100 * mean_acc:.2f}%"))
        shutil.rmtree(runs, ignore_errors=True)

    table = ["| measurement | result |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(table) + "\n"
    print(text)
    (out / "bench.md").write_text(text)
    (out / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}/bench.md and bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
