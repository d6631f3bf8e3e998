"""MNIST as four uint8 tensors in memory: read and verify IDX files, split, slice batches.

The dataset is 55 MB of bytes. Holding it as one tensor and slicing batches from it replaces the
notebook's per-sample `ToTensor` + `DataLoader` pipeline, which spends most of an epoch in Python.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_lab.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# SHA-256 of the *decompressed* files (the .gz containers differ between mirrors; the content
# does not). From data/mnist/README.md, which records their provenance.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class IdxFile:
    array: torch.Tensor  # uint8, shape from the IDX header
    sha256: str  # of the decompressed bytes


def read_idx(path: Path, expected_magic: int | None = None) -> IdxFile:
    """Parse one IDX file (gzip or raw): check magic, dimensions and length against the header."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except PermissionError:
        raise DataError(f"{path}: unreadable (permission denied); give this user read access "
                        "or point data.root at a readable copy") from None
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot decompress ({err}); the file is truncated or corrupt, "
                        "replace it with a fresh copy") from None
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC) or (expected_magic and magic != expected_magic):
        want = expected_magic or f"{LABELS_MAGIC} or {IMAGES_MAGIC}"
        raise DataError(f"{path}: magic number {magic}, expected {want}; not an MNIST IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = 1
    for d in dims:
        count *= d
    if len(raw) - header != count:
        raise DataError(f"{path}: header says {dims} = {count} bytes of data, file holds "
                        f"{len(raw) - header}; the file is truncated or corrupt")
    array = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)
    return IdxFile(array, hashlib.sha256(raw).hexdigest())


def find_file(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def read_split(root: Path, split: str, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Images (N, 28, 28) and labels (N,) of one split, checked against each other and SHA256."""
    images_stem, labels_stem = SPLIT_FILES[split]
    checksums = {}
    parts = []
    for stem, magic in ((images_stem, IMAGES_MAGIC), (labels_stem, LABELS_MAGIC)):
        path = find_file(root, stem)
        if path is None:
            raise DataError(f"{root}: {stem}(.gz) not found; point data.root at a folder with the "
                            "four MNIST IDX files, or set data.download=true to fetch them")
        idx = read_idx(path, magic)
        if verify and idx.sha256 != SHA256[stem]:
            raise DataError(f"{path}: SHA-256 of the decompressed content is {idx.sha256}, "
                            f"expected {SHA256[stem]}; the file is corrupt or not the original "
                            "MNIST (data.verify=false skips this check for custom data)")
        checksums[stem] = idx.sha256
        parts.append(idx.array)
    images, labels = parts
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{root}: {split} images have shape {tuple(images.shape)} and labels "
                        f"{tuple(labels.shape)}; expected (N, H, W) and (N,)")
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} {split} images but {len(labels)} labels")
    if int(labels.max()) > 9:
        raise DataError(f"{root}: {split} labels hold {int(labels.max())}; digits are 0-9")
    return images, labels, checksums


def download(root: Path) -> None:
    """Fetch the four files with torchvision into a temporary folder, verify, then move them in.

    Nothing lands in `root` unless all four files verify, so a failed download leaves no debris.
    """
    from torchvision.datasets import MNIST

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        try:
            MNIST(tmp, train=True, download=True)
            MNIST(tmp, train=False, download=True)
        except Exception as err:  # torchvision raises RuntimeError or URLError by mirror
            raise DataError(f"downloading MNIST into {root} failed: {err}") from None
        raw = Path(tmp) / "MNIST" / "raw"
        for split in SPLIT_FILES:
            read_split(raw, split, verify=True)
        for stem in SHA256:
            source = find_file(raw, stem)
            shutil.move(source, root / source.name)


@dataclass
class MnistTensors:
    """The whole dataset as uint8 tensors plus the train/validation index split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    checksums: dict

    def members(self, rows: torch.Tensor) -> "MnistTensors":
        """The rows `rows` of a stack's data (see `member_data`)."""
        return MnistTensors(**{k: take_rows(v, rows) if k.startswith(("train", "val")) else v
                               for k, v in self.__dict__.items()})

    def to(self, device: torch.device) -> "MnistTensors":
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in self.__dict__.items()}
        return MnistTensors(**moved)


def load_mnist(root: str | Path, val_size: int, seed: int, limit: int | None = None,
               download_missing: bool = False, verify: bool = True) -> MnistTensors:
    root = Path(root)
    missing = [stem for stem in SHA256 if find_file(root, stem) is None]
    if missing and download_missing:
        download(root)
    train_images, train_labels, checksums = read_split(root, "train", verify)
    test_images, test_labels, test_checksums = read_split(root, "test", verify)
    checksums.update(test_checksums)
    n = len(train_images)
    if not 0 < val_size < n:
        raise DataError(f"data.val_size={val_size}: must be in 1..{n - 1} for {n} training images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if limit is not None:
        train_idx = train_idx[:limit]
    return MnistTensors(train_images[train_idx], train_labels[train_idx].long(),
                 train_images[val_idx], train_labels[val_idx].long(),
                 test_images, test_labels.long(), checksums)


def split_seed(cfg) -> int:
    """The seed the train/validation split is drawn from: `data.split_seed`, else `seed`."""
    return cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 28, 28) -> float (..., 1, 28, 28) in [0, 1], as `ToTensor` gives."""
    return images.unsqueeze(-3).float().div_(255)


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
            generator: torch.Generator | list[torch.Generator] | None = None):
    """Yield (x, y) float batches; shuffled when a generator is given. The last one may be short.

    Images may carry a leading member dimension (members, N, 28, 28), labels (members, N), for
    a stack (stacking.py): a list of generators then gives each member its own order, the one
    its generator would give it alone.
    """
    n = images.shape[-3]
    if generator is None:
        for start in range(0, n, batch_size):
            length = min(batch_size, n - start)
            yield to_float(images.narrow(-3, start, length)), labels.narrow(-1, start, length)
        return
    if isinstance(generator, list):
        order = torch.stack([torch.randperm(n, generator=g) for g in generator]).to(images.device)
        rows = torch.arange(len(generator), device=images.device).unsqueeze(1)
        for start in range(0, n, batch_size):
            idx = order[:, start:start + batch_size]
            yield to_float(images[rows, idx]), labels[rows, idx]
        return
    order = torch.randperm(n, generator=generator).to(images.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield to_float(images[idx]), labels[idx]


def take_rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if tensor.dim() and tensor.stride(0) == 0:  # one tensor shared by all members
        return tensor[:1].expand(len(rows), *tensor.shape[1:])
    return tensor[rows]


def member_data(datasets: Sequence[MnistTensors],
                device: torch.device | None = None) -> MnistTensors:
    """One dataset for a stack, on `device`: train and val tensors with a member dimension
    (one copy, expanded, when the members' splits are the same), the shared test set."""
    first = datasets[0]
    same = all(d is first or (d.checksums == first.checksums
                              and torch.equal(d.train_labels, first.train_labels)
                              and torch.equal(d.train_images, first.train_images))
               for d in datasets)
    base = first.to(device) if device is not None else first
    fields = {}
    for key, value in base.__dict__.items():
        if key.startswith(("train", "val")):
            fields[key] = value.expand(len(datasets), *value.shape) if same else \
                torch.stack([getattr(d, key) for d in datasets]).to(value.device)
        else:
            fields[key] = value
    return MnistTensors(**fields)
