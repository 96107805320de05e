"""Data sets by name or file: where they live on disk, how they load, split, and download.

Owns the three data sets of the study ("synthetic12", "szt", "mnist") and the user's own
files (.npz with arrays x and y, .parquet or .csv with feature columns and a label column,
each optionally with a `split` array or column) as one `Dataset` shape, the data directory
(flag > IBRAY_DATA_DIR > ~/.cache/ibray), the offline generator of the 12-bit synthetic task,
the readers of `var_u.mat` and of MNIST's IDX files, the stratified train/test split, and
checksum-verified downloads. A file is read once into memory, hashed (SHA-256) and parsed from
those same bytes, so the hash names exactly the data that was checked. Every failure a user
can fix raises `DataError`, whose message says what is wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from ibray.data_files import load_file
from ibray.data_names import DATA_FILE_TYPES, DATASETS, DEFAULT_LABEL_COLUMN, data_file
from ibray.dataset import Dataset, stratified_split
from ibray.errors import DataError
from ibray.storage import replace_atomically

ConfigT = TypeVar("ConfigT")  # a TrialConfig: this module stands below the config

__all__ = ["DataError", "Dataset", "data_dir", "download", "load_dataset", "stratified_split"]

DATA_DIR_ENV = "IBRAY_DATA_DIR"
SYNTHETIC_BITS = 12
SYNTHETIC_SAMPLES = 2**SYNTHETIC_BITS

SZT_FILE = "var_u.mat"
# Shwartz-Ziv & Tishby's IDNNs repository; its loader reads data/<data_name>.mat with
# data_name defaulting to "var_u" (idnns/networks/network_paramters.py).
SZT_URL = "https://raw.githubusercontent.com/ravidziv/IDNNs/master/data"
MNIST_DIR = "mnist"
# PyTorch's (torchvision's) mirror of LeCun's files; yann.lecun.com itself is unreliable.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist"
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The standard split: (train, test) sample counts. Tests shrink it to write tiny IDX files.
MNIST_COUNTS = (60_000, 10_000)
MNIST_IMAGE_SHAPE = (28, 28)

# SHA-256 of each downloadable file. var_u.mat: the file as published in Shwartz-Ziv & Tishby's
# IDNNs repository (SZT_URL), 4096 x 12 inputs and labels.
# MNIST .gz files: the digests published alongside the same files by many public projects
# (torchvision's mirror list, guild.ai's mnist package, Haskell/Scala/Ruby MNIST loaders).
CHECKSUMS = {
    SZT_FILE: "0ba9551878a855396a8de0cbaae620788ede1e7b1eb2b8373bbe017d5ea02036",
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

_IDX_UBYTE = 0x08
_DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data directory: `override` (a CLI flag), else $IBRAY_DATA_DIR, else ~/.cache/ibray."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "ibray"


# load_dataset and download take a `data_dir` argument that shadows the function.
_resolve_data_dir = data_dir


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    train_fraction: float = 0.8,
    split_seed: int = 0,
    label_column: str = DEFAULT_LABEL_COLUMN,
) -> Dataset:
    """Load a data set by name, or from a file, with its train/test split.

    Synthetic sets are split by `stratified_split(y, train_fraction, split_seed)`; MNIST
    keeps its standard 60,000 / 10,000 split and ignores both arguments. A file (see
    `load_file`) is split by its own `split` array or column if it has one, else stratified
    like the synthetic sets; `data_dir` does not apply to it.
    """
    file = data_file(name)
    if file is not None:
        return load_file(file, train_fraction, split_seed, label_column)
    if name not in DATASETS:
        raise DataError(
            f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}, or a data file ({', '.join(DATA_FILE_TYPES)})"
        )
    if name == "mnist":
        return _load_mnist(_resolve_data_dir(data_dir) / MNIST_DIR)
    if name == "szt":
        x, y = _load_szt(_resolve_data_dir(data_dir) / SZT_FILE)
    else:
        x, y = synthetic12()
    train_idx, test_idx = stratified_split(y, train_fraction, split_seed)
    return Dataset(name, x, y, train_idx, test_idx, n_classes=2, image_shape=None)


class DataKey(NamedTuple):
    """What a trial's data set depends on: trials with equal keys train on the same Dataset.
    The one way a config's data set is named and loaded (the launcher loads each key once)."""

    dataset: str
    train_fraction: float
    split_seed: int
    label_column: str

    @classmethod
    def of(cls, config) -> DataKey:
        """The key of a TrialConfig."""
        return cls(config.dataset, config.train_fraction, config.split_seed, config.label_column)

    def load(self, data_dir: str | os.PathLike | None = None) -> Dataset:
        return load_dataset(self.dataset, data_dir, self.train_fraction, self.split_seed, self.label_column)


def pin_dataset(config: ConfigT) -> ConfigT:
    """`config` (a TrialConfig) with its data file pinned: the file is read and checked
    (DataError when it is not usable) and its value gets the SHA-256 of its bytes. A built-in
    data set, or a value pinned already, comes back as it is, without reading anything. The
    sweep loader and `ibray trial` take this step; the config itself reads no file."""
    return pin_dataset_shape(config)[0]


def pin_dataset_shape(config: ConfigT) -> tuple[ConfigT, tuple[int, ...] | None]:
    """`pin_dataset(config)` and, when that read a file, the shape of one of its samples
    ((features,), (height, width) or (channels, height, width)); None when it read nothing.
    The sweep loader checks the pairings that need the shape (conv takes images) with it."""
    file = data_file(config.dataset)
    if file is None or file.sha256 is not None:
        return config, None
    config, loaded = load_pinned(config)
    return config, loaded.sample_shape


def load_pinned(config: ConfigT, data_dir: str | os.PathLike | None = None) -> tuple[ConfigT, Dataset]:
    """`config`'s data set, read once, and `config` with a data file it names pinned by that
    read (a pinned value, or a built-in set, comes back as it is)."""
    dataset = DataKey.of(config).load(data_dir)
    if data_file(config.dataset) is not None and config.dataset != dataset.name:
        config = dataclasses.replace(config, dataset=dataset.name)
    return config, dataset


# ---------------------------------------------------------------- synthetic12


def icosahedron_vertices() -> np.ndarray:
    """(12, 3) unit vectors; row j is where input bit j (column j of x) sits on the sphere."""
    golden = (1.0 + 5.0**0.5) / 2.0
    vertices = []
    for first in (1.0, -1.0):
        for second in (golden, -golden):
            # the cyclic permutations of (0, +-1, +-golden)
            vertices += [(0.0, first, second), (first, second, 0.0), (second, 0.0, first)]
    vertices = np.array(vertices)
    return vertices / np.linalg.norm(vertices, axis=1, keepdims=True)


def _binary_inputs(bits: int) -> np.ndarray:
    """Every `bits`-bit input once; row i holds the bits of i, most significant first."""
    shifts = np.arange(bits - 1, -1, -1)
    return ((np.arange(2**bits)[:, None] >> shifts) & 1).astype(np.uint8)


def synthetic12() -> tuple[np.ndarray, np.ndarray]:
    """An offline stand-in for var_u: x (4096, 12) float32 bits, y (4096,) int64 labels.

    Input bits sit on the vertices of a regular icosahedron; the label thresholds the
    squared norm of the sum of the active vertices, a rotation-invariant function. That
    norm depends only on how many active bits there are and how many active pairs are
    neighbours (dot 1/sqrt5), non-neighbours (-1/sqrt5) or antipodes (-1), so it is built
    from those integer counts: equal counts give bit-identical values, and the threshold,
    placed between two distinct values, labels whole rotation orbits alike.
    """
    bits = _binary_inputs(SYNTHETIC_BITS).astype(np.int64)
    gram = icosahedron_vertices() @ icosahedron_vertices().T
    inv_sqrt5 = 5.0**-0.5

    def active_pairs(dot: float) -> np.ndarray:
        kind = np.isclose(gram, dot).astype(np.int64)
        return ((bits @ kind) * bits).sum(axis=1) // 2

    active = bits.sum(axis=1)
    neighbours, others, antipodes = (active_pairs(d) for d in (inv_sqrt5, -inv_sqrt5, -1.0))
    # |sum v|^2 = active + 2 (neighbours - others) / sqrt5 - 2 antipodes, times sqrt5
    norm_sqrt5 = (active - 2 * antipodes) * 5.0**0.5 + 2.0 * (neighbours - others)

    values, counts = np.unique(norm_sqrt5, return_counts=True)
    # labelled 1: every input whose value is >= values[i]; pick i closest to half the inputs
    at_or_above = np.cumsum(counts[::-1])[::-1]
    threshold = values[np.argmin(np.abs(at_or_above - SYNTHETIC_SAMPLES / 2))]
    y = (norm_sqrt5 >= threshold).astype(np.int64)
    return bits.astype(np.float32), y


# ---------------------------------------------------------------- szt (var_u.mat)


def _load_szt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(
            f"the szt data set is missing: {path} does not exist; "
            f"run `ibray data download szt` (or pass --data-dir / set {DATA_DIR_ENV})"
        )
    redownload = f"delete {path} and run `ibray data download szt`"
    import scipy.io  # only this data set needs scipy; keep it off the import path of others

    try:
        contents = scipy.io.loadmat(str(path))
    except Exception as error:  # scipy raises many kinds for a damaged file
        raise DataError(f"{path} is not a readable MATLAB file ({error}); {redownload}") from error
    missing = [key for key in ("F", "y") if key not in contents]
    if missing:
        raise DataError(f"{path} lacks the key(s) {', '.join(missing)}; {redownload}")
    features, labels = np.asarray(contents["F"]), np.asarray(contents["y"])
    if features.shape != (SYNTHETIC_SAMPLES, SYNTHETIC_BITS):
        raise DataError(
            f"{path}: F has shape {features.shape}, expected ({SYNTHETIC_SAMPLES}, {SYNTHETIC_BITS}); {redownload}"
        )
    if labels.size != SYNTHETIC_SAMPLES or labels.squeeze().ndim != 1:
        raise DataError(f"{path}: y has shape {labels.shape}, expected (1, {SYNTHETIC_SAMPLES}); {redownload}")
    if not (np.isin(features, (0, 1)).all() and np.isin(labels, (0, 1)).all()):
        raise DataError(f"{path}: F and y must hold only 0 and 1; {redownload}")
    return features.astype(np.float32), labels.reshape(-1).astype(np.int64)


# ---------------------------------------------------------------- mnist (IDX files)


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (plain or gzip) as a uint8 array of the shape its header gives."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                raw = stream.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path} cannot be read ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != _IDX_UBYTE:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x}, expected unsigned bytes (0x08)")
    ndim = raw[3]
    header_bytes = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_bytes:
        raise DataError(f"{path}: IDX header is truncated or declares no dimensions")
    shape = struct.unpack(f">{ndim}I", raw[4:header_bytes])
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(raw) - header_bytes
    if found != expected:
        raise DataError(
            f"{path}: header {shape} promises {expected} bytes of data but the file has {found} (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape)


def _find_mnist_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"the mnist data set is missing: neither {folder / stem} nor {folder / stem}.gz exists; "
        f"run `ibray data download mnist` (or pass --data-dir / set {DATA_DIR_ENV})"
    )


def _load_mnist(folder: Path) -> Dataset:
    paths = {part: _find_mnist_file(folder, stem) for part, stem in MNIST_FILES.items()}
    images, labels = [], []
    for split, count in zip(("train", "test"), MNIST_COUNTS):
        redownload = "delete it and run `ibray data download mnist`"
        image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        try:
            split_images, split_labels = read_idx(image_path), read_idx(label_path)
        except DataError as error:
            raise DataError(f"{error}; {redownload}") from error
        if split_images.shape != (count, *MNIST_IMAGE_SHAPE):
            raise DataError(
                f"{image_path}: shape {split_images.shape}, expected {(count, *MNIST_IMAGE_SHAPE)}; {redownload}"
            )
        if split_labels.shape != (count,) or split_labels.max(initial=0) > 9:
            raise DataError(
                f"{label_path}: expected {count} labels in 0..9, found shape "
                f"{split_labels.shape} with maximum {split_labels.max(initial=0)}; {redownload}"
            )
        images.append(split_images.reshape(count, -1))
        labels.append(split_labels)
    x = np.concatenate(images).astype(np.float32) / np.float32(255.0)
    y = np.concatenate(labels).astype(np.int64)
    n_train, n_test = MNIST_COUNTS
    return Dataset(
        name="mnist",
        x=x,
        y=y,
        train_idx=np.arange(n_train, dtype=np.int64),
        test_idx=np.arange(n_train, n_train + n_test, dtype=np.int64),
        n_classes=10,
        image_shape=MNIST_IMAGE_SHAPE,
    )


# ---------------------------------------------------------------- downloads


def _sources(name: str, root: Path) -> tuple[str, Path, list[str]]:
    """(base URL, target folder, file names) of a data set's downloadable files."""
    if name == "szt":
        return SZT_URL, root, [SZT_FILE]
    if name == "mnist":
        return MNIST_URL, root / MNIST_DIR, [f"{stem}.gz" for stem in MNIST_FILES.values()]
    return "", root, []  # synthetic12 is generated, nothing to fetch


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, sha256: str) -> None:
    """Download `url` to `target` via a temp file beside it; only a verified file appears."""

    def write_verified(temp: Path) -> None:
        digest = hashlib.sha256()
        with temp.open("wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                    for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as error:
                raise DataError(
                    f"could not download {url} ({error}); check the network and retry, "
                    f"or put the file at {target} yourself"
                ) from error
        if digest.hexdigest() != sha256:
            raise DataError(
                f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256}; the download is "
                "corrupt or the source changed, so nothing was saved; retry later"
            )

    replace_atomically(target, write_verified)


def download(
    name: str,
    data_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    checksums: Mapping[str, str] | None = None,
) -> list[Path]:
    """Fetch a data set's files into the data directory and return their paths.

    Files already present with the right SHA-256 are kept; others are (re)downloaded.
    `base_url` replaces the host part (files come from base_url + '/' + file name) and
    `checksums` (file name -> SHA-256 hex) overrides entries of `CHECKSUMS`; both exist so
    tests can serve their own files.
    """
    _check_name(name)
    default_url, folder, file_names = _sources(name, _resolve_data_dir(data_dir))
    table = {**CHECKSUMS, **(checksums or {})}
    url_root = (base_url if base_url is not None else default_url).rstrip("/")
    made = [] if folder.exists() else [f for f in (folder, *folder.parents) if not f.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for file_name in file_names:
            target = folder / file_name
            if not (target.is_file() and _sha256(target) == table[file_name]):
                _fetch(f"{url_root}/{file_name}", target, table[file_name])
            paths.append(target)
    except BaseException:
        for created in made:  # a failed download leaves no empty folders it made behind
            with contextlib.suppress(OSError):
                created.rmdir()  # only if empty: files fetched before the failure stay
        raise
    return paths
