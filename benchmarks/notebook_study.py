"""The reference notebook's study as one process, for bench.py to time against `make run`.

    python benchmarks/notebook_study.py ROOT --epochs 2 [--limit N] [--out DIR]

ROOT holds torchvision's MNIST/raw layout (bench.py makes it from data/mnist). What the notebook
does, in its order and with its pipeline: torchvision's MNIST with ToTensor per image, a random
48,000/12,000 split through SubsetRandomSampler, DataLoaders at batch 20; the FFNN then the CNN,
each with the N(0, 1/sqrt(n)) Linear init, Adam 1e-3, a validation pass after every epoch (no
`no_grad`, as in the notebook) and the state_dict saved whenever validation loss does not rise;
then the best weights reloaded, the per-class test loop, the loss-curve figure and a figure of
one test batch's predictions per model. `--limit` trains on fewer images (bench.py --quick).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnist_lab.models import CNN, FFNN  # noqa: E402  (the notebook's two architectures)
from mnist_lab.weight_init import normal  # noqa: E402


def loaders(root: str, limit: int | None):
    from torch.utils.data import DataLoader
    from torch.utils.data.sampler import SubsetRandomSampler
    from torchvision import datasets, transforms

    to_tensor = transforms.Compose([transforms.ToTensor()])
    train_data = datasets.MNIST(root, train=True, download=False, transform=to_tensor)
    test_data = datasets.MNIST(root, train=False, download=False, transform=to_tensor)
    indices = torch.randperm(len(train_data)).tolist()
    train_idx, valid_idx = indices[12000:], indices[:12000]
    if limit:
        train_idx = train_idx[:limit]
    return (DataLoader(train_data, batch_size=20, sampler=SubsetRandomSampler(train_idx)),
            DataLoader(train_data, batch_size=20, sampler=SubsetRandomSampler(valid_idx)),
            DataLoader(test_data, batch_size=20))


def train(model: nn.Module, epochs: int, train_loader, valid_loader, path: Path) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    losses, best = {"train": [], "valid": []}, float("inf")
    for epoch in range(epochs):
        start = time.perf_counter()  # bench.py scales the study from these epoch times
        train_loss = valid_loss = 0.0
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
        model.eval()
        for images, labels in valid_loader:
            valid_loss += criterion(model(images), labels).item()
        losses["train"].append(train_loss / len(train_loader))
        losses["valid"].append(valid_loss / len(valid_loader))
        print(f"epoch {epoch + 1}: train {losses['train'][-1]:.4f} valid {losses['valid'][-1]:.4f} "
              f"{time.perf_counter() - start:.3f} s", flush=True)
        if losses["valid"][-1] <= best:
            torch.save(model.state_dict(), path)
            best = losses["valid"][-1]
    return losses


def test(model: nn.Module, test_loader, out: Path, name: str) -> float:
    import matplotlib.pyplot as plt

    correct, total = [0] * 10, [0] * 10
    model.eval()
    for images, labels in test_loader:
        right = model(images).argmax(1).eq(labels)
        for i in range(len(labels)):
            correct[labels[i]] += right[i].item()
            total[labels[i]] += 1
    images, labels = next(iter(test_loader))
    preds = model(images).argmax(1)
    fig = plt.figure(figsize=(25, 4))
    for i in range(20):
        ax = fig.add_subplot(2, 10, i + 1, xticks=[], yticks=[])
        ax.imshow(images[i].squeeze().numpy())
        ax.set_title(f"{preds[i].item()} ({labels[i].item()})",
                     color="blue" if preds[i] == labels[i] else "red")
    fig.savefig(out / f"{name}_predictions.png")
    plt.close(fig)
    return sum(correct) / sum(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_loader, valid_loader, test_loader = loaders(args.root, args.limit)
    fig = plt.figure(figsize=(10, 5))
    for i, (name, model) in enumerate((("FFNN", FFNN()), ("CNN", CNN())), start=1):
        normal(model)
        path = out / f"{name}_model.pth"
        losses = train(model, args.epochs, train_loader, valid_loader, path)
        model.load_state_dict(torch.load(path))
        ax = fig.add_subplot(1, 2, i)
        ax.plot(losses["train"], label="Training Loss")
        ax.plot(losses["valid"], label="Validation Loss")
        ax.set_title(f"MNIST-Digits : {name}")
        ax.legend()
        print(f"{name} test accuracy {test(model, test_loader, out, name):.4f}")
    fig.savefig(out / "losses.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
