"""Qualitative captions: the PNG grid (size, cells, references, atomic write) and the W&B table (offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from wandb_files import read_run

from mmfuse.tasks.caption_samples import caption_grid, image_box, wandb_caption_table

COLOURS = [(250, 0, 0), (0, 200, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250)]
REFS = ["a red circle to the left of a blue square", "a blue square to the right of a red circle", "a third one"]


def solid(rgb, size=16):
    return torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size).clone()


def samples(n):
    return [solid(COLOURS[i]) for i in range(n)], [f"generated caption {i}" for i in range(n)], [REFS] * n


def read(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def centre(box, shape):
    left, bottom, width, height = box
    h, w = shape[:2]
    return int(round((1 - bottom - height / 2) * h)), int(round((left + width / 2) * w))


def test_grid_size_and_cells(tmp_path):
    images, generated, references = samples(5)
    path = caption_grid(images, generated, references, tmp_path / "grid.png", columns=4, cell_inches=(2.0, 3.0), dpi=50)
    assert path == tmp_path / "grid.png"
    pixels = read(path)
    assert pixels.shape == (300, 400, 3)  # 2 rows x 4 columns of 100 x 150 px
    for i in range(8):
        row, col = divmod(i, 4)
        y, x = centre(image_box(row, col, 2, 4), pixels.shape)
        want = COLOURS[i] if i < 5 else (255, 255, 255)  # cells 5..7 are empty
        assert tuple(pixels[y, x]) == want, i
        text = pixels[row * 150 + 95: (row + 1) * 150, col * 100: (col + 1) * 100]  # below the image box
        assert ((text < 128).all(axis=-1).sum() > 20) == (i < 5), i
    four = read(caption_grid(*samples(4), tmp_path / "four.png", columns=4, cell_inches=(2.0, 3.0), dpi=50))
    assert four.shape == (150, 400, 3)  # one row
    two = read(caption_grid(*samples(2), tmp_path / "two.png", columns=4, cell_inches=(2.0, 3.0), dpi=50))
    assert two.shape == (150, 200, 3)  # fewer samples than columns: as many columns as samples
    tall = read(caption_grid(*samples(5), tmp_path / "tall.png", columns=2, cell_inches=(2.0, 3.0), dpi=50))
    assert tall.shape == (450, 200, 3)  # 3 rows x 2 columns


def test_grid_draws_up_to_max_references(tmp_path):
    ink = []
    for k in range(4):
        pixels = read(caption_grid(*samples(1), tmp_path / f"refs{k}.png", max_references=k, dpi=60))
        ink.append(int((pixels < 200).all(axis=-1).sum()))
    assert ink[0] < ink[1] < ink[2] < ink[3]  # REFS has three references
    assert ink[3] == int((read(caption_grid(*samples(1), tmp_path / "more.png", max_references=9, dpi=60)) < 200)
                         .all(axis=-1).sum())


def test_grid_writes_exactly_path_atomically(tmp_path, monkeypatch):
    out = tmp_path / "sub" / "captions"  # no extension: none is added
    caption_grid(*samples(2), out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["captions"] and read(out).shape[2] == 3
    before = out.read_bytes()
    caption_grid(*samples(3), out)  # the same name again: replaced
    assert out.read_bytes() != before and sorted(p.name for p in out.parent.iterdir()) == ["captions"]
    before = out.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        caption_grid(*samples(1), out)
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["captions"]


def test_grid_rejects_bad_inputs(tmp_path):
    images, generated, references = samples(2)
    with pytest.raises(ValueError, match="2 images, 1 generated captions and 2 reference lists"):
        caption_grid(images, generated[:1], references, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"image 1 is torch.float32 \(3, 16, 16\); expected a uint8 tensor"):
        caption_grid([images[0], images[1].float()], generated, references, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no samples"):
        caption_grid([], [], [], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_wandb_table_is_a_no_op_without_a_wandb_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    assert wandb_caption_table([CSVLogger(tmp_path)], *samples(2)) == 0
    assert wandb_caption_table([], *samples(2)) == 0
    assert not list(tmp_path.iterdir())


def test_wandb_table_offline(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    for key, value in {"WANDB_API_KEY": "", "NETRC": "/nonexistent/netrc", "WANDB_MODE": "offline",
                       "WANDB_DATA_DIR": str(tmp_path / "data"), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
                       "WANDB_CONFIG_DIR": str(tmp_path / "config"), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    logger = WandbLogger(project="mmfuse-test", save_dir=str(tmp_path), mode="offline")
    images = [solid(COLOURS[0], 8), solid(COLOURS[1], 8), solid(COLOURS[2], 8)]
    generated = ["a red circle above a blue square", "g1", "g2"]
    references = [REFS[:2], ["only one"], []]
    assert wandb_caption_table([CSVLogger(tmp_path / "csv"), logger], images, generated, references) == 1
    logger.experiment.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (row,) = read_run(run_dir)["history"]
    assert row["val/captions._type"] == "table-file"
    assert (row["val/captions.nrows"], row["val/captions.ncols"]) == (3, 3)
    table = json.loads((run_dir / "files" / row["val/captions.path"]).read_text())
    assert table["columns"] == ["image", "generated", "references"]
    assert table["data"] == [
        ["Image", "a red circle above a blue square",
         "a red circle to the left of a blue square | a blue square to the right of a red circle"],
        ["Image", "g1", "only one"],
        ["Image", "g2", ""],
    ]
