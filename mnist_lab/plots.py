"""The notebook's figures, as PNG files: loss curves, per-class accuracy, confusion, predictions.

Each title names the run and its key settings, so two saved PNGs are told apart; they are sized
to stay readable in the MLflow UI's artifact preview, which shows them about 700 pixels wide.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:  # torch only for annotations: `mnist-lab compare` draws without importing it
    import torch

    from mnist_lab.evaluate import EvalResult


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _epoch_axis(ax, epochs: int) -> None:
    """Whole epochs only (never 1.5), with room around a run of one epoch."""
    epochs = max(epochs, 1)
    if epochs <= 15:
        ax.set_xticks(range(1, epochs + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, epochs + 0.5)


def loss_curves(history: dict[str, list[float]], best_epoch: int, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    epochs = range(1, len(history["train/loss"]) + 1)
    # markers: a run of one or two epochs still shows its points
    ax.plot(epochs, history["train/loss"], marker="o", label="train/loss")
    ax.plot(epochs, history["val/loss"], marker="s", label="val/loss")
    ax.axvline(best_epoch, color="grey", linestyle="--",
               label=f"best epoch {best_epoch} (lowest val/loss)")
    ax.set(xlabel="epoch", ylabel="cross-entropy")
    ax.set_title(title, fontsize=10)
    _epoch_axis(ax, len(epochs))
    ax.legend()
    return _save(fig, path)


def class_accuracy(test: EvalResult, path: Path, title: str) -> Path:
    """Errors per class from zero, so bar heights compare honestly; accuracies as labels."""
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    accuracy = 100 * test.class_accuracy
    bars = ax.bar(range(len(accuracy)), (100 - accuracy).tolist(), color="tab:red")
    ax.bar_label(bars, labels=[f"{a:.1f}%" for a in accuracy.tolist()], fontsize=9)
    ax.set(xlabel="digit (bar labels: test accuracy)", ylabel="test error (%), lower is better",
           xticks=range(len(accuracy)))
    ax.set_ylim(0, max(1.0, float((100 - accuracy).max())) * 1.15)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def confusion(test: EvalResult, path: Path, title: str) -> Path:
    """Counts in each cell (zeros left blank); the colour is the share of the true class, on a
    power scale so that a handful of mistakes still shows."""
    counts = test.confusion
    share = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(7, 6.5), layout="constrained")
    ax.imshow(share.numpy(), cmap="Blues", norm=PowerNorm(0.3, vmin=0, vmax=1))
    classes = len(counts)
    for i in range(classes):
        for j in range(classes):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=10,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(classes), yticks=range(classes))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def digit_grid(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
               path: Path, title: str, extra: list[str] | None = None) -> Path:
    """Images captioned `predicted (true)`, blue when right and red when wrong, as in the
    notebook; `extra` adds a second caption line. One tiled image in one axes: twenty axes
    of their own cost a second per figure, a tenth of a short run."""
    count = len(images)
    columns = min(10, max(count, 1))
    rows = max(1, -(-count // columns))
    cell, caption = 28 + 4, 13 if extra else 9  # pixels: the digit and a gap; caption room
    height = cell + caption
    tiles = np.full((rows * height, columns * cell), np.nan)
    for i in range(count):
        top, left = (i // columns) * height + caption, (i % columns) * cell + 2
        tiles[top:top + 28, left:left + 28] = images[i].cpu().numpy()
    fig = plt.figure(figsize=(columns * 1.2, rows * (1.75 if extra else 1.5) + 0.7))
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.7 / fig.get_figheight()))
    ax.imshow(tiles, cmap="gray", interpolation="nearest")
    ax.axis("off")
    for i in range(count):
        right = int(predictions[i]) == int(labels[i])
        text = f"{int(predictions[i])} ({int(labels[i])})" + (f"\n{extra[i]}" if extra else "")
        ax.text((i % columns) * cell + cell / 2, (i // columns) * height + caption - 1.5, text,
                ha="center", va="bottom", color="blue" if right else "red", fontsize=10)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def overlay(curves: dict[str, list[float]], path: Path, ylabel: str, title: str) -> Path:
    """One line per run; runs of a single epoch show as a point."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=4, label=name)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    _epoch_axis(ax, max((len(v) for v in curves.values()), default=1))
    if curves:
        ax.legend(fontsize=7)
    return _save(fig, path)


def intervals(panels: dict[str, list[tuple[str, float, float, float]]], path: Path,
              xlabel: str) -> Path:
    """One panel per title: each row's value as a dot and its interval (NaN: none) as a bar."""
    height = 1 + sum(0.6 + 0.3 * len(rows) for rows in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, height), squeeze=False,
                             layout="constrained")
    for ax, (title, rows) in zip(axes[:, 0], panels.items()):
        y = list(range(len(rows)))[::-1]  # first row on top
        values = [value for _, value, _, _ in rows]
        reach = [[value - low for _, value, low, _ in rows],
                 [high - value for _, value, _, high in rows]]
        reach = [[0.0 if math.isnan(r) else max(r, 0.0) for r in side] for side in reach]
        ax.errorbar(values, y, xerr=reach, fmt="o", capsize=3, color="tab:blue")
        ax.axvline(0, color="grey", linestyle="--")
        ax.set(yticks=y, yticklabels=[label for label, *_ in rows], xlabel=xlabel)
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def write_run_figures(out: Path, label: str, history: dict[str, list[float]], best_epoch: int,
                      test: EvalResult, test_images: torch.Tensor,
                      test_labels: torch.Tensor) -> list[Path]:
    """All per-run figures into `out`; `label` (the run's name and settings) heads each title."""
    label = textwrap.fill(label, 80)  # the title fits the figure's width
    mistakes = (test.predictions != test_labels.cpu()).nonzero().flatten()
    worst = mistakes[test.confidence[mistakes].argsort(descending=True)][:20]
    return [
        loss_curves(history, best_epoch, out / "loss_curves.png", f"loss per epoch\n{label}"),
        class_accuracy(test, out / "class_accuracy.png", f"test error per class\n{label}"),
        confusion(test, out / "confusion_matrix.png",
                  f"test confusion matrix (counts; colour: share of the true class)\n{label}"),
        digit_grid(test_images[:20], test_labels[:20], test.predictions[:20],
                   out / "test_predictions.png",
                   f"first 20 test images, captioned predicted (true); red: wrong\n{label}"),
        digit_grid(test_images[worst], test_labels[worst], test.predictions[worst],
                   out / "confident_mistakes.png",
                   "the most confident mistakes, captioned predicted (true) and the model's "
                   f"probability for its wrong answer\n{label}",
                   extra=[f"{c:.0%}" for c in test.confidence[worst].tolist()]),
    ]


def study_figures(study, out: Path) -> list[Path]:
    """Optuna's own figures of a study, as images: its optimisation history, parallel
    coordinates, parameter importances and slice; with several objectives, its Pareto front."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    if len(study.directions) > 1:
        drawings = {"pareto_front": lambda: optuna_plots.plot_pareto_front(
            study, target_names=names)}
    else:
        drawings = {"optimization_history": lambda: optuna_plots.plot_optimization_history(
                        study, target_name=names[0]),
                    "parallel_coordinates": lambda: optuna_plots.plot_parallel_coordinate(
                        study, target_name=names[0]),
                    "param_importances": lambda: optuna_plots.plot_param_importances(study),
                    "slice": lambda: optuna_plots.plot_slice(study, target_name=names[0])}
    paths = []
    with warnings.catch_warnings(), plt.rc_context():  # Optuna's plots switch the style globally
        warnings.simplefilter("ignore", ExperimentalWarning)
        for name, draw in drawings.items():
            axes = np.atleast_1d(draw()).ravel()
            figure = axes[0].figure
            figure.set_size_inches(max(7.0, 3.0 * len(axes)), 4.5)
            paths.append(_save(figure, out / f"{name}.png"))
    return paths
