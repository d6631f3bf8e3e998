"""The prediction grids: every digit drawn where its caption says, right ones blue, wrong red."""

import numpy as np
import torch

from mnist_lab import plots


def test_digit_grid_tiles_each_image_under_its_caption(tmp_path, monkeypatch):
    kept = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.setdefault("fig", fig) and path)
    images = torch.randint(1, 255, (13, 28, 28), dtype=torch.uint8)
    labels = torch.arange(13) % 10
    predictions = labels.clone()
    predictions[4] = 9  # one mistake
    plots.digit_grid(images, labels, predictions, tmp_path / "g.png", "title",
                     extra=[f"{i}%" for i in range(13)])
    (ax,) = kept["fig"].axes
    tiles = ax.images[0].get_array()
    captions = [t.get_text() for t in ax.texts]
    colours = [t.get_color() for t in ax.texts]
    assert captions[4] == "9 (4)\n4%" and captions[12] == "2 (2)\n12%"
    assert colours.count("red") == 1 and colours[4] == "red"
    for i, text in enumerate(ax.texts):  # the image below caption i is image i
        x, y = text.get_position()
        left, top = int(x - 14), int(np.ceil(y)) + 1
        found = np.asarray(tiles[top:top + 28, left:left + 28])
        assert np.array_equal(found, images[i].numpy()), i
