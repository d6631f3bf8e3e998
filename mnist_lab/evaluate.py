"""Evaluation: loss, accuracy, per-class accuracy and the confusion matrix in one pass."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.augment import tta_logits
from mnist_lab.data import batches
from mnist_lab.schema import EvalConf


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per sample
    accuracy: float  # fraction in [0, 1]
    confusion: torch.Tensor  # (classes, classes) counts, rows = true label
    predictions: torch.Tensor  # (N,) predicted class
    confidence: torch.Tensor  # (N,) softmax probability of the predicted class
    seconds: float  # the pass's wall time

    @property
    def class_total(self) -> torch.Tensor:
        return self.confusion.sum(dim=1)

    @property
    def class_correct(self) -> torch.Tensor:
        return self.confusion.diagonal()

    @property
    def class_accuracy(self) -> torch.Tensor:
        return self.class_correct.double() / self.class_total.clamp(min=1)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = EvalConf.batch_size, tta: bool = False) -> EvalResult:
    """One pass in eval mode; `tta` averages the softmax over one-pixel shifts of each image.
    The confusion matrix has a row and a column per output of the model."""
    return evaluate_members(model, images, labels, batch_size, tta)[0]


@torch.inference_mode()
def evaluate_members(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     batch_size: int = EvalConf.batch_size,
                     tta: bool = False) -> list[EvalResult]:
    """`evaluate` for a model that may be a stack (stacking.StackedModel): one result per
    member. Images and labels are shared by the members, or have a member dimension."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    loss_sum = None
    preds, confs = [], []
    for x, y in batches(images, labels, batch_size):
        logits = tta_logits(model, x) if tta else model(x)
        if logits.dim() == 2:  # one model: one member
            logits = logits.unsqueeze(0)
        y = y.expand(logits.shape[:2])
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        batch_loss = losses.view(y.shape).double().sum(dim=1)
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        conf, pred = logits.softmax(dim=-1).max(dim=-1)
        preds.append(pred)
        confs.append(conf)
    model.train(was_training)
    classes = logits.shape[-1]
    predictions = torch.cat(preds, dim=1).cpu()
    confidence = torch.cat(confs, dim=1).cpu()
    truth = labels.cpu().expand(predictions.shape)
    members = len(predictions)
    flat = (torch.arange(members).unsqueeze(1) * classes + truth) * classes + predictions
    confusion = torch.bincount(flat.flatten(), minlength=members * classes * classes)
    confusion = confusion.reshape(members, classes, classes)
    losses = (loss_sum / truth.shape[1]).tolist()
    accuracy = (predictions == truth).double().mean(dim=1).tolist()
    seconds = time.perf_counter() - start
    return [EvalResult(loss=losses[i], accuracy=accuracy[i], confusion=confusion[i],
                       predictions=predictions[i], confidence=confidence[i], seconds=seconds)
            for i in range(members)]


def report(result: EvalResult, title: str) -> str:
    """The notebook's per-class lines, as a readable block."""
    lines = [f"{title}: test/loss {result.loss:.4f}"]
    for digit, (correct, total) in enumerate(zip(result.class_correct.tolist(),
                                                 result.class_total.tolist())):
        lines.append(f"  class {digit}: {100 * correct / max(total, 1):6.2f}%  "
                     f"({correct} of {total})")
    correct, total = int(result.class_correct.sum()), int(result.class_total.sum())
    lines.append(f"  overall: {100 * result.accuracy:6.2f}%  ({correct} of {total})")
    return "\n".join(lines)
