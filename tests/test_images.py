"""Own images: a .npz whose x holds images, (N, H, W) or (N, C, H, W) (ibray.data_files), the
built-in conv on any image set of at least 10x10 pixels (models.ConvNetwork, config's
check_sample_shape) and own CNNs on them, through `ibray trial`, `ibray verify` and a sweep
file; shapes that do not fit, refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from ibray.cli import main
from ibray.data import DataError, load_dataset
from ibray.errors import ConfigError
from ibray.models import batched_network
from ibray.sweep import load_sweep

# An own CNN for any number of channels: one 3x3 convolution, ReLU, pooled to 2x2, a dense layer.
CNN_SOURCE = """
from torch import nn


def cnn(channels):
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )


def gray():
    return cnn(1)


def rgb():
    return cnn(3)
"""


def images(path: Path, shape: tuple[int, ...], samples: int = 96) -> Path:
    """`samples` images of `shape` (one sample's) in three classes: a bright square in one of
    three places, on noise."""
    rng = np.random.default_rng(0)
    y = np.arange(samples) % 3
    x = rng.random((samples, *shape)).astype(np.float32) * 0.3
    square = x.reshape(samples, -1, *shape[-2:])  # a view: (N, C, H, W) whatever the shape
    for row, label in enumerate(y):
        square[row, :, 2 * label : 2 * label + 3, 2:5] += 0.7
    np.savez(path, x=x, y=y)
    return path


def test_an_npz_of_images_keeps_its_shape_and_flat_pixels(tmp_path):
    gray = load_dataset(str(images(tmp_path / "gray.npz", (12, 12))))
    assert gray.image_shape == (12, 12) == gray.sample_shape and gray.x.shape == (96, 144)
    rgb = load_dataset(str(images(tmp_path / "rgb.npz", (3, 10, 10))))
    assert rgb.image_shape == (3, 10, 10) == rgb.sample_shape and rgb.x.shape == (96, 300)
    with np.load(tmp_path / "rgb.npz") as archive:  # pixels flattened channel by channel (C order)
        assert np.array_equal(rgb.x[5], archive["x"][5].reshape(-1))
    np.savez(tmp_path / "rows.npz", x=np.eye(4).repeat(4, axis=0), y=np.arange(16) % 2)
    rows = load_dataset(str(tmp_path / "rows.npz"))  # feature rows, as before
    assert rows.image_shape is None and rows.sample_shape == (4,) and rows.x.shape == (16, 4)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros(8), r"x has shape \(8,\); give it as \(samples, features\), or images as \(samples, height, width\)"),
        (np.zeros((8, 1, 1, 4, 4)), r"x has shape \(8, 1, 1, 4, 4\); give it as \(samples, features\)"),
        (np.zeros((8, 0, 4)), r"x has shape \(8, 0, 4\), images without pixels"),
    ],
)
def test_an_x_of_no_usable_shape_is_refused_in_one_line(tmp_path, x, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=np.arange(8) % 2)
    with pytest.raises(DataError, match=f"^{tmp_path}/bad.npz: {message}") as error:
        load_dataset(str(path))
    assert "\n" not in str(error.value)


def test_conv_takes_channels_first_images_as_torch_convolves_them():
    # bits 32: the float network, against torch's own conv2d, pooling and linear layers
    net = batched_network("conv", "relu", 300, 3, bits=32, seeds=2, image_shape=(3, 10, 10))
    for slot in range(2):
        net.init_slot(slot, torch.Generator().manual_seed(slot))
    assert [spec.width for spec in net.layers] == [2 * 4 * 4, 2 * 1 * 1, 16, 3]
    x = torch.rand(2, 20, 300)
    got = net.train()(x).log_probs
    w, b = net.weights, net.biases
    for slot in range(2):
        hidden = x[slot].reshape(20, 3, 10, 10)
        for layer in (0, 1):
            hidden = F.max_pool2d(F.relu(F.conv2d(hidden, w[layer][slot], b[layer][slot].reshape(-1))), 2)
        hidden = F.relu(hidden.flatten(1) @ w[2][slot] + b[2][slot])
        expected = torch.log_softmax(hidden @ w[3][slot] + b[3][slot], dim=-1)
        torch.testing.assert_close(got[slot], expected, atol=1e-5, rtol=0)


def test_a_conv_seed_on_colour_images_does_not_depend_on_its_batch_mates():
    x = torch.rand(3, 40, 300)
    together = batched_network("conv", "relu", 300, 3, bits=8, seeds=3, image_shape=(3, 10, 10))
    for slot in range(3):
        together.init_slot(slot, torch.Generator().manual_seed(slot))
    together = together.train()(x)
    alone = batched_network("conv", "relu", 300, 3, bits=8, seeds=1, image_shape=(3, 10, 10))
    alone.init_slot(0, torch.Generator().manual_seed(2))
    alone = alone.train()(x[2:3])
    assert torch.equal(alone.log_probs[0], together.log_probs[2])
    assert all(torch.equal(a[0], b[2]) for a, b in zip(alone.codes, together.codes))


@pytest.mark.parametrize("shape, factory", [((1, 12, 12), "gray"), ((3, 10, 10), "rgb")])
def test_ibray_trial_trains_conv_and_an_own_cnn_on_an_image_file(tmp_path, capsys, shape, factory):
    data = images(tmp_path / "images.npz", shape)
    (tmp_path / "nets.py").write_text(CNN_SOURCE)
    runs = {
        "conv": ["--architecture", "conv", "--activation", "relu"],
        "own": ["--architecture", f"{tmp_path}/nets.py:{factory}"],
    }
    for name, network in runs.items():
        out = tmp_path / name
        args = ["trial", "--dataset", str(data), *network, "--seeds", "0-1", "--epochs", "2", "--out", str(out)]
        assert main([*args, "--learning-rate", "0.01", "--batch-size", "32"]) == 0
        assert main(["verify", str(out)]) == 0
        mi = pl.read_parquet(out / "mi" / "*.parquet")
        layers = 4 if name == "conv" else 3  # conv1, conv2, dense1 / the two ReLUs; and the output
        assert mi.height == 2 * 3 * layers and mi["mi_xt"].is_finite().all()  # 2 seeds x epochs 0-2
        assert (mi["mi_xt"] <= np.log2(96) + 1e-9).all()
    assert capsys.readouterr().out.count("every row once") == 2


def test_conv_refuses_feature_rows_and_small_images_in_one_line(tmp_path, capsys):
    np.savez(tmp_path / "rows.npz", x=np.eye(4).repeat(4, axis=0), y=np.arange(16) % 2)
    images(tmp_path / "small.npz", (3, 9, 12))
    cases = {
        "rows.npz": "architecture: 'conv' needs images, but rows.npz@",
        "small.npz": "architecture: 'conv' needs images of at least 10x10 pixels",
    }
    for file, message in cases.items():
        out = tmp_path / "out"
        args = ["trial", "--dataset", str(tmp_path / file), "--architecture", "conv", "--epochs", "1"]
        assert main([*args, "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error and not out.exists()
    assert "holds images of shape (3, 9, 12)" in error
    with pytest.raises(ConfigError) as error:  # a sweep, before anything starts
        load_sweep(_sweep(tmp_path, "dataset: [rows.npz, small.npz]\narchitecture: [16-8, conv]\n"))
    lines = str(error.value).splitlines()
    assert len(lines) == 2 and "holds feature rows (x of shape (samples, 4))" in lines[0]
    assert "small.npz" in lines[1] and "(3, 9, 12)" in lines[1]


def test_a_sweep_of_conv_on_image_files_validates(tmp_path):
    images(tmp_path / "gray.npz", (12, 12))
    images(tmp_path / "rgb.npz", (3, 10, 10))
    spec = load_sweep(_sweep(tmp_path, "dataset: [gray.npz, rgb.npz]\narchitecture: conv\nactivation: relu\n"))
    assert len(spec.trials) == 2 and all(t.architecture == "conv" for t in spec.trials)


def _sweep(folder: Path, body: str) -> Path:
    """A sweep file in `folder` whose data files' relative paths are taken from there."""
    for name in ("rows.npz", "small.npz", "gray.npz", "rgb.npz"):
        body = body.replace(name, str(folder / name))
    path = folder / "s.yaml"
    path.write_text(f"name: images\nepochs: 1\n{body}")
    return path
