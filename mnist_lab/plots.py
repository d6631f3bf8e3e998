"""The notebook's figures, as PNG files: loss curves, per-class accuracy, confusion, predictions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:  # torch only for annotations: `mnist-lab compare` draws without importing it
    import torch

    from mnist_lab.evaluate import EvalResult


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_curves(history: dict[str, list[float]], best_epoch: int, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(history["train/loss"]) + 1)
    ax.plot(epochs, history["train/loss"], label="train/loss")
    ax.plot(epochs, history["val/loss"], label="val/loss")
    ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title=title)
    ax.legend()
    return _save(fig, path)


def class_accuracy(test: EvalResult, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    accuracy = 100 * test.class_accuracy
    bars = ax.bar(range(len(accuracy)), accuracy.tolist(), color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    low = max(0.0, float(accuracy.min()) - 2)
    ax.set(xlabel="digit", ylabel="test accuracy (%)", xticks=range(len(accuracy)),
           ylim=(low, 100.5), title=title)
    return _save(fig, path)


def confusion(test: EvalResult, path: Path, title: str) -> Path:
    counts = test.confusion
    normalised = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, matrix, label, fmt in ((axes[0], counts, "counts", "{:d}"),
                                   (axes[1], normalised, "row-normalised", "{:.3f}")):
        ax.imshow(matrix.numpy(), cmap="Blues")
        for (i, j), value in zip(((i, j) for i in range(len(matrix)) for j in range(len(matrix))),
                                 matrix.flatten().tolist()):
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=6,
                    color="white" if value > matrix.max().item() / 2 else "black")
        ax.set(xlabel="predicted", ylabel="true", title=f"{title}: {label}",
               xticks=range(len(matrix)), yticks=range(len(matrix)))
    return _save(fig, path)


def digit_grid(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
               path: Path, title: str, extra: list[str] | None = None) -> Path:
    """Images titled `pred (true)`, blue when right and red when wrong, as in the notebook."""
    count = len(images)
    columns = min(10, max(count, 1))
    rows = max(1, -(-count // columns))
    fig = plt.figure(figsize=(columns * 1.3, rows * 1.6 + 0.4))
    for i in range(count):
        ax = fig.add_subplot(rows, columns, i + 1, xticks=[], yticks=[])
        ax.imshow(images[i].cpu().numpy(), cmap="gray")
        right = int(predictions[i]) == int(labels[i])
        caption = f"{int(predictions[i])} ({int(labels[i])})" + (f"\n{extra[i]}" if extra else "")
        ax.set_title(caption, color="blue" if right else "red", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def overlay(curves: dict[str, list[float]], path: Path, ylabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    if curves:
        ax.legend(fontsize=7)
    return _save(fig, path)


def intervals(panels: dict[str, list[tuple[str, float, float, float]]], path: Path,
              xlabel: str) -> Path:
    """One panel per title: each row's value as a dot and its interval (NaN: none) as a bar."""
    height = 1 + sum(0.6 + 0.3 * len(rows) for rows in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, height), squeeze=False)
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


def write_run_figures(out: Path, name: str, history: dict[str, list[float]], best_epoch: int,
                      test: EvalResult, test_images: torch.Tensor,
                      test_labels: torch.Tensor) -> list[Path]:
    """All per-run figures into `out`; returns their paths."""
    mistakes = (test.predictions != test_labels.cpu()).nonzero().flatten()
    worst = mistakes[test.confidence[mistakes].argsort(descending=True)][:20]
    return [
        loss_curves(history, best_epoch, out / "loss_curves.png", f"{name}: loss"),
        class_accuracy(test, out / "class_accuracy.png", f"{name}: per-class test accuracy"),
        confusion(test, out / "confusion_matrix.png", name),
        digit_grid(test_images[:20], test_labels[:20], test.predictions[:20],
                   out / "test_predictions.png", f"{name}: first 20 test images, pred (true)"),
        digit_grid(test_images[worst], test_labels[worst], test.predictions[worst],
                   out / "confident_mistakes.png", f"{name}: most confident mistakes",
                   extra=[f"{c:.2f}" for c in test.confidence[worst].tolist()]),
    ]
