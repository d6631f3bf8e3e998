"""Speed of the lab on this machine, as ratios measured side by side in one process.

    python benchmarks/bench.py [--quick] [--out benchmarks/results] [--device cuda]
    mnist-lab bench [--quick]

Prints a Markdown table and writes `bench.json` and `bench.md` to --out. Measures: data load
time; training samples/s of both models at batch 20, 128 and 512 with the share of this
machine's fp32 peak (measured as the best large-matmul rate); the notebook's own pipeline
(torchvision MNIST + ToTensor + SubsetRandomSampler + DataLoader) against the lab's loop, per
epoch; a tracked run against tracking=off (and with the model exported at the run's end); the
whole study (both models, as `make run` and as the notebook, `notebook_study.py`) timed at 1
and 2 epochs and scaled to 20, also with the two models side by side; the share of
`experiment=lr_dropout launcher=parallel`'s wall time spent training and evaluating; start-up
of `run.py --help` and of a config error; the `speedrun` experiment over 3 seeds; and issue
17's five targets against those figures. `--quick` shortens every measurement (a few minutes,
its figures are not comparable) and runs one speedrun seed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import resource
import shutil
import statistics
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


def timed(args: list[str], what: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=7200)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start, result.stdout


def run_py(overrides: list[str], out: Path) -> tuple[float, str]:
    """One run.py run: its wall time and its report.txt."""
    seconds, _ = timed(["run.py", *overrides, f"hydra.run.dir={out}", "train.progress=off"],
                       f"run.py {' '.join(overrides)}")
    return seconds, (out / "report.txt").read_text()


def accuracy_of(report: str) -> float:
    return float(report.split("overall:")[1].split("%")[0]) / 100


def scaled(wall: float, epoch_times: list[list[float]], concurrent: bool, epochs: int = 20) -> dict:
    """A whole process of `wall` seconds whose models trained epochs of `epoch_times` seconds
    (one list per model, training + validation), as fixed cost + per-epoch cost, scaled to
    `epochs`. Models in turn add up; models side by side (`concurrent`) cost the slowest's."""
    combine = max if concurrent else sum
    inside = combine(sum(times) for times in epoch_times)
    per_epoch = combine(sum(times) / len(times) for times in epoch_times)
    return {"wall_seconds": wall, "fixed_seconds": wall - inside, "epoch_seconds": per_epoch,
            f"scaled_{epochs}_epochs_seconds": wall - inside + epochs * per_epoch}


def newest_sweep(uri: str) -> tuple[list, list[list[float]]]:
    """The newest sweep's runs in the store at `uri`, and each one's epoch times (training +
    validation, from its epoch_seconds and val_seconds metrics)."""
    from mlflow import MlflowClient

    from mnist_lab.queries import children, metric_curve

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-lab").experiment_id
    parent = client.search_runs([experiment], "tags.sweep = 'true'", max_results=1,
                                order_by=["attributes.start_time DESC"])[0]
    runs = children(client, parent.info.run_id)
    return runs, [[a + b for a, b in zip(metric_curve(client, r.info.run_id, "epoch_seconds"),
                                         metric_curve(client, r.info.run_id, "val_seconds"))]
                  for r in runs]


def study(raw_root: Path, runs: Path, uri: str, quick: bool, on_device: str) -> dict:
    """Target 1: the notebook's study (both models, 2 epochs) by the notebook's pipeline and by
    `make run` (experiment=notebook, tracked, figures), each timed whole and scaled to 20 epochs
    from its own epoch times; and the lever of the two models side by side (launcher=parallel)."""
    epochs = ["train.epochs=2", "data.limit=2400"] if quick else ["train.epochs=2"]
    seconds, out = timed([str(ROOT / "benchmarks" / "notebook_study.py"), str(raw_root),
                          "--epochs", "2", "--out", str(runs / "notebook")]
                         + (["--limit", "2400"] if quick else []), "the notebook's study")
    per_model = [[float(t) for t in re.findall(r"^epoch \d+: .* (\d+\.\d+) s$", part, re.M)]
                 for part in out.split("test accuracy")[:2]]
    result = {"notebook": scaled(seconds, per_model, concurrent=False)}
    labs = {"lab": []} if quick else {"lab": [], "lab_parallel": ["launcher=parallel"]}
    for name, extra in labs.items():
        seconds, _ = timed(["run.py", "experiment=notebook", *epochs, f"tracking.uri={uri}",
                            on_device, "train.progress=off", *extra,
                            f"hydra.sweep.dir={runs}/{name}"], f"{name} study")
        result[name] = scaled(seconds, newest_sweep(uri)[1], concurrent=bool(extra))
    for name in result:
        result[name]["speedup"] = (result["notebook"]["scaled_20_epochs_seconds"]
                                   / result[name]["scaled_20_epochs_seconds"])
    return result


def sweep_efficiency(runs: Path, uri: str, quick: bool, on_device: str) -> dict:
    """Target 3: `experiment=lr_dropout launcher=parallel`'s share of wall time inside training
    and evaluation (each run's epoch_seconds + val_seconds + test_seconds, summed over runs,
    over the wall time x the jobs that run at once)."""
    n_jobs = 2
    shorter = ["optim.lr=1e-3", "dropout.p=0.0", "train.epochs=1", "data.limit=2400"] if quick else []
    wall, _ = timed(["run.py", "experiment=lr_dropout", "launcher=parallel",
                     f"launcher.n_jobs={n_jobs}", f"tracking.uri={uri}", on_device,
                     "train.progress=off", *shorter, f"hydra.sweep.dir={runs}/lr_dropout"],
                    "experiment=lr_dropout")
    children, times = newest_sweep(uri)
    inside = sum(map(sum, times)) + sum(r.data.metrics.get("test_seconds", 0.0) for r in children)
    return {"runs": len(children), "n_jobs": n_jobs, "wall_seconds": wall,
            "training_and_evaluation_seconds": inside, "fraction": inside / (wall * n_jobs)}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few minutes, for CI")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every measurement on it)")
    args = parser.parse_args(argv)
    quick = args.quick
    device = torch.device(args.device)
    on_device = f"device={args.device}"
    torch.set_flush_denormal(True)  # as job.run does
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "quick": quick, "device": args.device}}
    if device.type == "cuda":
        figures["machine"]["gpu"] = torch.cuda.get_device_name(device)
    rows: list[tuple[str, str]] = []

    def row(measurement: str, result: str) -> None:  # printed as measured: a long run shows progress
        rows.append((measurement, result))
        print(f"| {measurement} | {result} |", flush=True)

    start = time.perf_counter()
    load_mnist(DATA, 12000, 0)
    figures["data_load_seconds"] = time.perf_counter() - start
    row("data load (read, verify SHA-256, split)", f"{figures['data_load_seconds']:.2f} s")

    peak = measured_peak(1.0 if quick else 3.0, device)
    figures["peak_gflops"] = peak / 1e9
    row(f"fp32 peak (best matmul, {args.device})", f"{peak / 1e9:.0f} GFLOP/s")

    for name, (model_cls, _) in MODELS.items():
        flops = training_flops(model_cls())
        figures[f"{name}_train_mflop_per_sample"] = flops / 1e6
        for batch in (20, 128, 512):
            steps = max(10, (300 if quick else 1500) * 20 // batch)
            rate = lab_step_rate(model_cls, batch, steps, device)
            share = rate * flops / peak
            figures[f"{name}_bs{batch}"] = {"samples_per_second": rate, "share_of_peak": share}
            row(f"{name} training, batch {batch}",
                f"{rate:,.0f} samples/s, {100 * share:.0f}% of peak")

    with tempfile.TemporaryDirectory() as tmp:
        raw_root = torchvision_layout(Path(tmp))
        for name, (model_cls, notebook_cls) in MODELS.items():
            steps = 150 if quick else 1200
            notebook = notebook_step_rate(notebook_cls, steps, raw_root, device)
            lab = lab_step_rate(model_cls, 20, steps, device)
            figures[f"{name}_epoch"] = {"notebook_seconds": TRAIN_IMAGES / notebook,
                                        "lab_seconds": TRAIN_IMAGES / lab,
                                        "speedup": lab / notebook}
            row(f"{name} epoch at batch 20: notebook pipeline vs lab loop",
                f"{TRAIN_IMAGES / notebook:.1f} s vs {TRAIN_IMAGES / lab:.1f} s "
                f"({lab / notebook:.1f}x)")

        runs = Path(tmp) / "runs"
        uri = f"sqlite:///{runs}/mlflow.db"
        store = f"tracking.uri={uri}"
        run_py(["model=ffnn", "train.epochs=1", "data.limit=1000", store, on_device],
               runs / "warm")  # the store
        # target 2 on a short run, where the fixed cost shows; the eager export is the lever
        # (taken in turn, 5 of each: the best wall time, and the median CPU time, which a shared
        # machine's noise of seconds disturbs far less)
        short = ["model=ffnn", "train.epochs=2", on_device, "data.limit=12000"]
        cases = {"off": ["tracking=off"], "on": ["tracking=local", store],
                 "eager_export": ["tracking=local", store, "tracking.log_model=true"]}
        times: dict[str, list] = {key: [] for key in cases}
        for i in range(1 if quick else 5):
            for key, extra in cases.items():
                cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall = run_py([*short, *extra], runs / f"short-{key}{i}")[0]
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                times[key].append((wall, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime))
        figures["tracking"] = {"overrides": short}
        for key, values in times.items():
            figures["tracking"][f"{key}_seconds"] = min(w for w, _ in values)
            figures["tracking"][f"{key}_cpu_seconds"] = statistics.median(c for _, c in values)
        track = figures["tracking"]
        for key, case in (("on", "tracked"), ("eager_export", "tracked, model exported at the end")):
            row(f"{case} vs tracking=off ({' '.join(short)}, whole process; best wall, median CPU "
                f"of {len(times[key])})",
                f"{track[key + '_seconds']:.1f} s vs {track['off_seconds']:.1f} s "
                f"({track[key + '_seconds'] - track['off_seconds']:+.1f} s); CPU "
                f"{track[key + '_cpu_seconds'] - track['off_cpu_seconds']:+.1f} s")

        figures["study"] = study(raw_root, runs, uri, quick, on_device)
        for name, fit in figures["study"].items():
            row(f"study (both models; 2 epochs, scaled to 20): {name}",
                f"{fit['scaled_20_epochs_seconds']:.0f} s ({fit['fixed_seconds']:.1f} s "
                f"fixed + {fit['epoch_seconds']:.1f} s/epoch), {fit['speedup']:.2f}x")

        sweep = figures["sweep"] = sweep_efficiency(runs, uri, quick, on_device)
        row(f"lr_dropout, launcher=parallel ({sweep['runs']} runs, {sweep['n_jobs']} jobs)",
            f"{sweep['wall_seconds']:.0f} s wall, {100 * sweep['fraction']:.0f}% in "
            "training and evaluation")

        help_s = timed_command(["run.py", "--help"], 3)
        error_s = timed_command(["run.py", "optim.lr=-1"], 3)
        figures["startup"] = {"help_seconds": help_s, "config_error_seconds": error_s}
        row("start-up: run.py --help / a config error", f"{help_s:.2f} s / {error_s:.2f} s")

        results = []
        for seed in (0,) if quick else (0, 1, 2):
            seconds, report = run_py(["experiment=speedrun", f"seed={seed}", "tracking=off",
                                      on_device], runs / f"speed{seed}")
            results.append({"seed": seed, "seconds": seconds, "test_acc": accuracy_of(report)})
        mean_acc = sum(r["test_acc"] for r in results) / len(results)
        mean_s = sum(r["seconds"] for r in results) / len(results)
        cnn_epoch = figures["cnn_epoch"]["notebook_seconds"]
        figures["speedrun"] = {"runs": results, "mean_test_acc": mean_acc,
                               "mean_seconds": mean_s, "notebook_cnn_epoch_seconds": cnn_epoch}
        row(f"speedrun, {len(results)} seed(s), whole process",
            f"{mean_s:.1f} s ({100 * mean_s / cnn_epoch:.0f}% of one notebook CNN "
            f"epoch), test acc {100 * mean_acc:.2f}%")
        shutil.rmtree(runs, ignore_errors=True)

    figures["targets"] = targets(figures)
    table = ["| measurement | result |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    table += ["", "| issue 17 target | measured | met |", "| --- | --- | --- |"]
    table += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |"
              for t in figures["targets"]]
    text = "\n".join(table) + "\n"
    print(text)
    (out / "bench.md").write_text(text)
    (out / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}/bench.md and bench.json")
    return 0


def targets(figures: dict) -> list[dict]:
    """Issue 17's five targets against this run's figures."""
    lab = figures["study"]["lab"]["speedup"]
    extra = figures["tracking"]["on_cpu_seconds"] - figures["tracking"]["off_cpu_seconds"]
    speed = figures["speedrun"]["mean_seconds"] / figures["speedrun"]["notebook_cnn_epoch_seconds"]
    rows = [("1. make run >= 3x the notebook's study", f"{lab:.2f}x", lab >= 3),
            ("2. a tracked run <= 1.5 s over tracking=off (CPU time)", f"{extra:+.1f} s",
             extra <= 1.5),
            ("3. lr_dropout (parallel) >= 85% in training and evaluation",
             f"{100 * figures['sweep']['fraction']:.0f}%", figures["sweep"]["fraction"] >= 0.85),
            ("4. speedrun >= 99.0% in < 0.5 notebook CNN epoch",
             f"{speed:.2f} epoch, {100 * figures['speedrun']['mean_test_acc']:.2f}%",
             speed < 0.5 and figures["speedrun"]["mean_test_acc"] >= 0.99),
            ("5. CNN at batch 128 >= 40% of fp32 peak",
             f"{100 * figures['cnn_bs128']['share_of_peak']:.0f}%",
             figures["cnn_bs128"]["share_of_peak"] >= 0.4)]
    return [{"target": t, "measured": m, "met": bool(ok)} for t, m, ok in rows]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
