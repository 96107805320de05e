"""Tests of ibray.data: loaders, the synthetic generator, splits, data directory, downloads."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from http_server import serve_directory

from ibray import data
from ibray.data import DataError

REPO = Path(__file__).resolve().parents[1]
VAR_U_CANDIDATES = (Path("/work/shared/data/var_u.mat"), REPO / ".." / "shared" / "data" / "var_u.mat")
VAR_U = next((path for path in VAR_U_CANDIDATES if path.is_file()), None)
needs_var_u = pytest.mark.skipif(VAR_U is None, reason="shared/data/var_u.mat is not available")


def natural_binary(bits: int) -> np.ndarray:
    return np.array([[(i >> (bits - 1 - j)) & 1 for j in range(bits)] for i in range(2**bits)])


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(folder: Path, counts: tuple[int, int], compress: bool, seed: int = 0) -> dict:
    """Random IDX files for a split of `counts`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in zip(("train", "t10k"), counts):
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, count, dtype=np.uint8)
    for stem, array in arrays.items():
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))
        else:
            (folder / stem).write_bytes(idx_bytes(array))
    return arrays


@pytest.fixture
def small_mnist(monkeypatch):
    """Shrink the standard split so IDX files stay tiny."""
    monkeypatch.setattr(data, "MNIST_COUNTS", (30, 12))
    return (30, 12)


@pytest.fixture(autouse=True)
def no_proxy_for_localhost(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# ---------------------------------------------------------------- data directory


def test_data_dir_precedence_flag_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IBRAY_DATA_DIR", raising=False)
    assert data.data_dir() == tmp_path / "home" / ".cache" / "ibray"
    monkeypatch.setenv("IBRAY_DATA_DIR", str(tmp_path / "env"))
    assert data.data_dir() == tmp_path / "env"
    assert data.data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert data.data_dir(str(tmp_path / "flag")) == tmp_path / "flag"


def test_load_dataset_uses_env_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("IBRAY_DATA_DIR", str(tmp_path / "from-env"))
    with pytest.raises(DataError, match="from-env"):
        data.load_dataset("szt")


# ---------------------------------------------------------------- names


def test_unknown_name_lists_allowed_names(tmp_path):
    for call in (lambda: data.load_dataset("cifar", tmp_path), lambda: data.download("cifar", tmp_path)):
        with pytest.raises(DataError) as caught:
            call()
        assert "cifar" in str(caught.value)
        assert all(name in str(caught.value) for name in data.DATASETS)


# ---------------------------------------------------------------- synthetic12


def rotation_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def as_vertex_permutation(rotation: np.ndarray, vertices: np.ndarray) -> tuple[int, ...]:
    """p with rotation @ vertices[j] == vertices[p[j]]."""
    distances = np.linalg.norm((vertices @ rotation.T)[:, None, :] - vertices[None], axis=2)
    permutation = distances.argmin(axis=1)
    assert np.allclose(distances.min(axis=1), 0, atol=1e-9)
    assert sorted(permutation) == list(range(len(vertices)))
    return tuple(int(p) for p in permutation)


def icosahedron_rotations() -> set[tuple[int, ...]]:
    vertices = data.icosahedron_vertices()
    gram = vertices @ vertices.T
    neighbours = [j for j in range(12) if np.isclose(gram[0, j], 5**-0.5)]
    face = next((0, a, b) for a in neighbours for b in neighbours if np.isclose(gram[a, b], 5**-0.5))
    generators = [
        as_vertex_permutation(rotation_matrix(vertices[0], 2 * np.pi / 5), vertices),
        as_vertex_permutation(rotation_matrix(vertices[list(face)].sum(0), 2 * np.pi / 3), vertices),
    ]
    group = {tuple(range(12))}
    frontier = list(group)
    while frontier:
        element = frontier.pop()
        for generator in generators:
            product = tuple(generator[element[j]] for j in range(12))
            if product not in group:
                group.add(product)
                frontier.append(product)
    return group


def test_icosahedron_is_regular():
    vertices = data.icosahedron_vertices()
    assert vertices.shape == (12, 3)
    assert np.allclose(np.linalg.norm(vertices, axis=1), 1)
    gram = vertices @ vertices.T
    off_diagonal = gram[~np.eye(12, dtype=bool)]
    # each vertex: 5 neighbours, 5 non-neighbours, 1 antipode
    for dot, count in ((5**-0.5, 5), (-(5**-0.5), 5), (-1.0, 1)):
        assert np.isclose(off_diagonal, dot).sum() == 12 * count


def test_synthetic12_inputs_are_all_12_bit_patterns_in_natural_order():
    x, y = data.synthetic12()
    assert x.shape == (4096, 12) and x.dtype == np.float32
    assert y.shape == (4096,) and y.dtype == np.int64
    np.testing.assert_array_equal(x, natural_binary(12))
    assert set(np.unique(y)) == {0, 1}


def test_synthetic12_is_balanced_and_deterministic():
    x, y = data.synthetic12()
    assert abs(y.mean() - 0.5) < 0.03
    x_again, y_again = data.synthetic12()
    np.testing.assert_array_equal(x, x_again)
    np.testing.assert_array_equal(y, y_again)


def test_synthetic12_labels_are_invariant_under_all_60_rotations():
    rotations = icosahedron_rotations()
    assert len(rotations) == 60
    x, y = data.synthetic12()
    bits = x.astype(np.int64)
    place_values = 2 ** np.arange(11, -1, -1)
    for permutation in rotations:
        moved = np.empty_like(bits)
        moved[:, list(permutation)] = bits  # the bit on vertex j moves to vertex p[j]
        np.testing.assert_array_equal(y[moved @ place_values], y)


def test_synthetic12_dataset_and_stratified_deterministic_split():
    dataset = data.load_dataset("synthetic12", train_fraction=0.8, split_seed=3)
    assert dataset.name == "synthetic12" and dataset.n_classes == 2 and dataset.image_shape is None
    train, test = dataset.train_idx, dataset.test_idx
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(4096))
    for label in (0, 1):
        in_class = (dataset.y == label).sum()
        assert (dataset.y[train] == label).sum() == round(0.8 * in_class)
    again = data.load_dataset("synthetic12", train_fraction=0.8, split_seed=3)
    np.testing.assert_array_equal(again.train_idx, train)
    other = data.load_dataset("synthetic12", train_fraction=0.8, split_seed=4)
    assert not np.array_equal(other.train_idx, train)


# ---------------------------------------------------------------- stratified_split


def test_stratified_split_keeps_class_proportions():
    y = np.array([0] * 100 + [1] * 30 + [2] * 10)
    train, test = data.stratified_split(y, 0.7, seed=0)
    assert [(y[train] == c).sum() for c in range(3)] == [70, 21, 7]
    assert [(y[test] == c).sum() for c in range(3)] == [30, 9, 3]
    again = data.stratified_split(y, 0.7, seed=0)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_fraction_outside_0_1(fraction):
    with pytest.raises(DataError, match="train_fraction"):
        data.stratified_split(np.zeros(10), fraction, seed=0)


# ---------------------------------------------------------------- szt


def test_szt_missing_file_names_path_and_command(tmp_path):
    with pytest.raises(DataError) as caught:
        data.load_dataset("szt", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "var_u.mat") in message
    assert "ibray data download szt" in message


@needs_var_u
def test_szt_real_file_is_every_12_bit_input_once():
    assert sha256_of(VAR_U) == data.CHECKSUMS["var_u.mat"]
    dataset = data.load_dataset("szt", VAR_U.parent)
    assert dataset.x.shape == (4096, 12) and dataset.x.dtype == np.float32
    assert dataset.y.shape == (4096,) and dataset.y.dtype == np.int64
    np.testing.assert_array_equal(dataset.x, natural_binary(12))
    assert dataset.y.mean() == pytest.approx(0.517, abs=0.001)
    assert dataset.n_classes == 2 and dataset.image_shape is None
    assert dataset.train_idx.size + dataset.test_idx.size == 4096


def test_szt_garbage_file_asks_to_redownload(tmp_path):
    (tmp_path / "var_u.mat").write_bytes(b"MATLAB 5.0 MAT-file, but not really" + bytes(200))
    with pytest.raises(DataError, match="ibray data download szt"):
        data.load_dataset("szt", tmp_path)


def test_szt_truncated_file_asks_to_redownload(tmp_path):
    if VAR_U is not None:
        content = VAR_U.read_bytes()
    else:
        scipy.io.savemat(tmp_path / "whole.mat", {"F": natural_binary(12).astype(np.uint8)}, do_compression=True)
        content = (tmp_path / "whole.mat").read_bytes()
    (tmp_path / "var_u.mat").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="ibray data download szt"):
        data.load_dataset("szt", tmp_path)


@pytest.mark.parametrize(
    "contents, complaint",
    [
        ({"F": np.zeros((4096, 10), np.uint8), "y": np.zeros((1, 4096), np.uint8)}, "shape"),
        ({"F": np.zeros((4096, 12), np.uint8), "y": np.zeros((1, 4000), np.uint8)}, "shape"),
        ({"X": np.zeros((4096, 12), np.uint8), "y": np.zeros((1, 4096), np.uint8)}, "F"),
        ({"F": np.full((4096, 12), 3, np.uint8), "y": np.zeros((1, 4096), np.uint8)}, "0 and 1"),
    ],
)
def test_szt_malformed_mat_is_rejected(tmp_path, contents, complaint):
    scipy.io.savemat(tmp_path / "var_u.mat", contents, do_compression=True)
    with pytest.raises(DataError, match=complaint) as caught:
        data.load_dataset("szt", tmp_path)
    assert "ibray data download szt" in str(caught.value)


# ---------------------------------------------------------------- mnist


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_idx_files_plain_or_gz(tmp_path, small_mnist, compress):
    arrays = write_mnist(tmp_path / "mnist", small_mnist, compress)
    dataset = data.load_dataset("mnist", tmp_path, train_fraction=0.5, split_seed=9)
    n_train, n_test = small_mnist
    assert dataset.x.shape == (n_train + n_test, 784) and dataset.x.dtype == np.float32
    expected = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])
    np.testing.assert_allclose(dataset.x, expected.reshape(-1, 784) / 255.0, rtol=1e-6)
    assert 0.0 <= dataset.x.min() and dataset.x.max() <= 1.0
    labels = np.concatenate([arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]])
    np.testing.assert_array_equal(dataset.y, labels)
    assert dataset.y.dtype == np.int64
    # the standard split, whatever train_fraction and split_seed say
    np.testing.assert_array_equal(dataset.train_idx, np.arange(n_train))
    np.testing.assert_array_equal(dataset.test_idx, np.arange(n_train, n_train + n_test))
    assert dataset.n_classes == 10 and dataset.image_shape == (28, 28)


def test_mnist_full_size_shapes(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for split, count in zip(("train", "t10k"), (60_000, 10_000)):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((count, 28, 28))))
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(count) % 10))
    dataset = data.load_dataset("mnist", tmp_path)
    assert dataset.x.shape == (70_000, 784) and dataset.x.dtype == np.float32
    assert dataset.train_idx[-1] == 59_999 and dataset.test_idx[0] == 60_000
    assert dataset.test_idx.size == 10_000


def test_mnist_missing_names_command(tmp_path, small_mnist):
    with pytest.raises(DataError, match="ibray data download mnist") as caught:
        data.load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte" in str(caught.value)


@pytest.mark.parametrize(
    "damage",
    ["truncate", "bad_magic", "wrong_count", "truncated_gzip", "not_gzip", "bad_label"],
)
def test_mnist_corrupt_files_are_rejected(tmp_path, small_mnist, damage):
    folder = tmp_path / "mnist"
    write_mnist(folder, small_mnist, compress=False)
    images = folder / "train-images-idx3-ubyte"
    labels = folder / "train-labels-idx1-ubyte"
    raw = images.read_bytes()
    if damage == "truncate":
        images.write_bytes(raw[:-100])
    elif damage == "bad_magic":
        images.write_bytes(b"\x12\x34" + raw[2:])
    elif damage == "wrong_count":
        images.write_bytes(idx_bytes(np.zeros((small_mnist[0] + 1, 28, 28))))
    elif damage == "truncated_gzip":
        images.unlink()
        gz = gzip.compress(raw)
        (folder / "train-images-idx3-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    elif damage == "not_gzip":
        images.unlink()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(raw)
    elif damage == "bad_label":
        labels.write_bytes(idx_bytes(np.full(small_mnist[0], 11)))
    with pytest.raises(DataError, match="ibray data download mnist"):
        data.load_dataset("mnist", tmp_path)


def test_read_idx_rejects_truncated_header(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 5))
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(path)


# ---------------------------------------------------------------- downloads


def serve_small_mnist(folder: Path, counts: tuple[int, int]) -> dict[str, str]:
    write_mnist(folder, counts, compress=True, seed=1)
    return {path.name: sha256_of(path) for path in folder.glob("*.gz")}


def test_download_mnist_from_local_server(tmp_path, small_mnist):
    served = tmp_path / "served"
    checksums = serve_small_mnist(served, small_mnist)
    target = tmp_path / "data"
    with serve_directory(served) as base_url:
        paths = data.download("mnist", target, base_url=base_url, checksums=checksums)
    assert sorted(p.name for p in paths) == sorted(checksums)
    assert all(p.parent == target / "mnist" for p in paths)
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(checksums)  # no temp left
    for path in paths:
        assert sha256_of(path) == checksums[path.name]
    dataset = data.load_dataset("mnist", target)
    assert dataset.x.shape == (sum(small_mnist), 784)
    # already verified files are kept: a second call needs no server at all
    assert data.download("mnist", target, base_url="http://127.0.0.1:9", checksums=checksums) == paths


def test_download_wrong_checksum_leaves_nothing(tmp_path, small_mnist):
    served = tmp_path / "served"
    checksums = serve_small_mnist(served, small_mnist)
    checksums["train-labels-idx1-ubyte.gz"] = "0" * 64
    target = tmp_path / "data"
    with serve_directory(served) as base_url, pytest.raises(DataError, match="SHA-256"):
        data.download("mnist", target, base_url=base_url, checksums=checksums)
    assert not (target / "mnist" / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (target / "mnist").iterdir() if p.name.startswith(".")]  # no temp file


def test_download_replaces_corrupt_file(tmp_path, small_mnist):
    served = tmp_path / "served"
    checksums = serve_small_mnist(served, small_mnist)
    target = tmp_path / "data"
    (target / "mnist").mkdir(parents=True)
    (target / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"half a file")
    with serve_directory(served) as base_url:
        data.download("mnist", target, base_url=base_url, checksums=checksums)
    assert sha256_of(target / "mnist" / "t10k-labels-idx1-ubyte.gz") == checksums["t10k-labels-idx1-ubyte.gz"]


def test_download_unreachable_server_raises_and_leaves_nothing(tmp_path, small_mnist):
    served = tmp_path / "served"
    checksums = serve_small_mnist(served, small_mnist)
    with serve_directory(served) as base_url:
        pass  # the port is closed again once the block ends
    with pytest.raises(DataError, match="could not download"):
        data.download("mnist", tmp_path / "data", base_url=base_url, checksums=checksums)
    assert not (tmp_path / "data").exists()  # not even the empty folders it made (the data dir, mnist/)


def test_download_missing_remote_file_raises(tmp_path):
    (tmp_path / "served").mkdir()
    with serve_directory(tmp_path / "served") as base_url, pytest.raises(DataError, match="404"):
        data.download("szt", tmp_path / "data", base_url=base_url)
    assert not (tmp_path / "data").exists()  # the data directory it made is gone again
    (tmp_path / "mine").mkdir()  # one that was there before stays
    with serve_directory(tmp_path / "served") as base_url, pytest.raises(DataError, match="404"):
        data.download("szt", tmp_path / "mine", base_url=base_url)
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []


@needs_var_u
def test_download_szt_from_local_server_with_real_checksum(tmp_path):
    with serve_directory(VAR_U.parent) as base_url:
        paths = data.download("szt", tmp_path, base_url=base_url)
    assert paths == [tmp_path / "var_u.mat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["var_u.mat"]
    assert data.load_dataset("szt", tmp_path).x.shape == (4096, 12)


def test_download_synthetic12_needs_nothing(tmp_path):
    assert data.download("synthetic12", tmp_path) == []


def test_download_urls_point_at_public_sources():
    assert data.SZT_URL.startswith("https://raw.githubusercontent.com/ravidziv/IDNNs/")
    assert data.MNIST_URL.startswith("https://")
    assert set(data.CHECKSUMS) == {"var_u.mat"} | {f"{stem}.gz" for stem in data.MNIST_FILES.values()}


# ---------------------------------------------------------------- the user's own files


def three_files(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The same samples as .npz, .csv and .parquet (labels in column 'label')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    x = rng.integers(-5, 6, size=(50, 3)).astype(np.float64) / 4
    y = np.r_[np.zeros(20), np.ones(18), np.full(12, 2)].astype(np.int64)
    np.savez(folder / "d.npz", x=x, y=y)
    (folder / "d.csv").write_text("f0,f1,f2,label\n" + "".join(f"{a},{b},{c},{k}\n" for (a, b, c), k in zip(x, y)))
    pq.write_table(pa.table({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "label": y}), folder / "d.parquet")
    return x, y


def test_npz_csv_and_parquet_give_the_same_data_set(tmp_path):
    x, y = three_files(tmp_path)
    loaded = [
        data.load_dataset(str(tmp_path / f"d.{kind}"), train_fraction=0.7, split_seed=3)
        for kind in ("npz", "csv", "parquet")
    ]
    train, test = data.stratified_split(y, 0.7, 3)
    for dataset, kind in zip(loaded, ("npz", "csv", "parquet")):
        assert dataset.x.dtype == np.float32 and np.array_equal(dataset.x, x.astype(np.float32))
        assert dataset.y.dtype == np.int64 and np.array_equal(dataset.y, y)
        assert np.array_equal(dataset.train_idx, train) and np.array_equal(dataset.test_idx, test)
        assert (dataset.n_classes, dataset.image_shape) == (3, None)
        assert dataset.name == f"{tmp_path}/d.{kind}@{sha256_of(tmp_path / f'd.{kind}')}"
    # the stratified split keeps each class's share: 14 of 20, 13 of 18 (round half even), 8 of 12
    assert np.bincount(y[train]).tolist() == [14, 13, 8]


@pytest.mark.parametrize("marks", [[1, 0], [True, False], ["train", "test"], [" Train", "TEST "]])
def test_a_split_array_or_column_fixes_the_split(tmp_path, marks):
    x = np.arange(24.0).reshape(12, 2)
    y = np.arange(12) % 2
    split = np.array([marks[1] if i in (2, 7, 11) else marks[0] for i in range(12)])
    np.savez(tmp_path / "s.npz", x=x, y=y, split=split)
    written = "".join(f"{a},{b},{k},{s}\n" for (a, b), k, s in zip(x, y, split.tolist()))
    (tmp_path / "s.csv").write_text("a,b,label,split\n" + written)
    for name in ("s.npz", "s.csv"):
        dataset = data.load_dataset(str(tmp_path / name), train_fraction=0.5)  # the marks win
        assert dataset.test_idx.tolist() == [2, 7, 11], name
        assert dataset.train_idx.tolist() == [0, 1, 3, 4, 5, 6, 8, 9, 10], name
        assert dataset.x.shape == (12, 2)  # the marks are no feature


def test_whole_float_labels_and_a_column_shaped_y_are_labels(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.ones((10, 1)), y=(np.arange(10) % 2).astype(float).reshape(10, 1))
    dataset = data.load_dataset(str(tmp_path / "f.npz"))
    assert dataset.y.dtype == np.int64 and dataset.y.tolist() == [0, 1] * 5


def test_a_table_names_its_label_column(tmp_path):
    (tmp_path / "t.csv").write_text("a,kind\n" + "".join(f"{i},{i % 2}\n" for i in range(10)))
    dataset = data.load_dataset(str(tmp_path / "t.csv"), label_column="kind")
    assert dataset.x[:, 0].tolist() == list(range(10)) and dataset.name.startswith(f"{tmp_path}/t.csv#kind@")
    # the pinned value carries the column: it loads alone, as a trial loads it
    assert np.array_equal(data.load_dataset(dataset.name).y, dataset.y)
    with pytest.raises(DataError, match=r"t.csv: no label column 'label' \(columns: a, kind\)"):
        data.load_dataset(str(tmp_path / "t.csv"))


def test_a_data_file_is_not_a_download(tmp_path):
    with pytest.raises(DataError) as refused:
        data.download("my.npz", tmp_path)
    assert str(refused.value) == "unknown data set 'my.npz'; allowed: synthetic12, szt, mnist"
    with pytest.raises(
        DataError,
        match=r"unknown data set 'cifar'; allowed: synthetic12, szt, mnist, or a data file \(.npz, .parquet, .csv\)",
    ):
        data.load_dataset("cifar")
