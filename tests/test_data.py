import gzip
import struct

import pytest
import torch

from helpers import (REAL_DATA, compose_config, make_dataset, synthetic_digits, tiny_overrides,
                      write_idx)
from mnist_lab.data import DataError, batches, load_mnist, read_idx, split_seed, to_float


def test_reads_gzip_and_raw_alike(tmp_path):
    images, labels = synthetic_digits(30, seed=3)
    gz = write_idx(tmp_path / "a-images", images, compress=True)
    raw = write_idx(tmp_path / "b-images", images, compress=False)
    assert torch.equal(read_idx(gz).array, images)
    assert torch.equal(read_idx(raw).array, images)
    assert read_idx(gz).sha256 == read_idx(raw).sha256
    assert torch.equal(read_idx(write_idx(tmp_path / "l", labels)).array, labels)


def test_loads_split_with_seeded_disjoint_validation(tiny_data):
    data = load_mnist(tiny_data, val_size=100, seed=0, verify=False)
    assert data.train_images.shape == (500, 28, 28) and data.val_images.shape == (100, 28, 28)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (200, 28, 28)
    again = load_mnist(tiny_data, val_size=100, seed=0, verify=False)
    other = load_mnist(tiny_data, val_size=100, seed=1, verify=False)
    assert torch.equal(data.val_images, again.val_images)
    assert not torch.equal(data.val_images, other.val_images)
    # train and val together are exactly the training file, each image once
    everything = torch.cat([data.train_images, data.val_images]).flatten(1)
    assert len({tuple(row.tolist()) for row in everything}) == len(torch.unique(everything, dim=0))
    assert len(everything) == 600


def test_limit_trains_on_first_n_of_training_part_only(tiny_data):
    full = load_mnist(tiny_data, val_size=100, seed=0, verify=False)
    limited = load_mnist(tiny_data, val_size=100, seed=0, limit=50, verify=False)
    assert torch.equal(limited.train_images, full.train_images[:50])
    assert torch.equal(limited.val_images, full.val_images)


def test_batches_scale_to_unit_range_and_cover_every_sample(tiny_data):
    data = load_mnist(tiny_data, val_size=100, seed=0, verify=False)
    seen = []
    for x, y in batches(data.train_images, data.train_labels, 64, torch.Generator().manual_seed(0)):
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        seen.append(y)
    assert sum(len(y) for y in seen) == 500  # 7 full batches and a short last one
    assert torch.equal(torch.cat(seen).sort().values, data.train_labels.sort().values)
    assert torch.allclose(to_float(torch.tensor([[[255]]], dtype=torch.uint8)), torch.ones(1, 1, 1, 1))


def corrupt(root, name, mutate):
    path = root / f"{name}.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(mutate(raw)))


@pytest.mark.parametrize("fault, message", [
    (lambda root: (root / "train-images-idx3-ubyte.gz").unlink(), "not found"),
    (lambda root: (root / "t10k-images-idx3-ubyte.gz").write_bytes(
        (root / "t10k-images-idx3-ubyte.gz").read_bytes()[:-100]), "truncated or corrupt"),
    (lambda root: corrupt(root, "train-images-idx3-ubyte",
                          lambda raw: struct.pack(">I", 1234) + raw[4:]), "magic number 1234"),
    (lambda root: corrupt(root, "train-labels-idx1-ubyte",
                          lambda raw: raw[:4] + struct.pack(">I", 601) + raw[8:]), "header says"),
    (lambda root: corrupt(root, "t10k-images-idx3-ubyte", lambda raw: raw[:-784]), "truncated"),
])
def test_each_corruption_is_refused_with_the_file_named(tiny_data, fault, message):
    fault(tiny_data)
    with pytest.raises(DataError, match=message) as err:
        load_mnist(tiny_data, val_size=100, seed=0, verify=False)
    assert str(tiny_data) in str(err.value)


def test_image_and_label_counts_must_match(tmp_path):
    root = make_dataset(tmp_path / "d")
    images, _ = synthetic_digits(550, seed=0)
    write_idx(root / "train-images-idx3-ubyte", images)
    with pytest.raises(DataError, match="550 train images but 600 labels"):
        load_mnist(root, val_size=100, seed=0, verify=False)


def test_checksum_mismatch_names_file_and_both_digests(tiny_data):
    with pytest.raises(DataError, match="SHA-256 .* expected ba891046"):
        load_mnist(tiny_data, val_size=100, seed=0, verify=True)


def test_val_size_must_leave_training_images(tiny_data):
    with pytest.raises(DataError, match="data.val_size=600"):
        load_mnist(tiny_data, val_size=600, seed=0, verify=False)


def test_bundled_mnist_verifies_and_matches_published_facts():
    data = load_mnist(REAL_DATA, val_size=12000, seed=0)
    assert len(data.train_images) == 48000 and len(data.val_images) == 12000
    assert len(data.test_images) == 10000
    train_labels = torch.cat([data.train_labels, data.val_labels])
    assert torch.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                     6265, 5851, 5949]
    assert torch.bincount(data.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                         1028, 974, 1009]
    assert data.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert set(data.checksums) == {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}


def test_split_seed_null_keeps_the_seeded_split_and_a_fixed_one_holds_across_seeds(tiny_data):
    def validation(*overrides):
        cfg = compose_config([*tiny_overrides(tiny_data), *overrides])
        return load_mnist(tiny_data, 100, split_seed(cfg), verify=False).val_images

    # null (the default): the split every run drew before data.split_seed existed
    assert torch.equal(validation("seed=3"), load_mnist(tiny_data, 100, 3, verify=False).val_images)
    assert not torch.equal(validation("seed=3"), validation("seed=4"))
    fixed = validation("seed=3", "data.split_seed=7")
    assert torch.equal(fixed, validation("seed=4", "data.split_seed=7"))
    assert not torch.equal(fixed, validation("seed=3"))
