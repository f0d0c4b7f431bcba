"""The official CIFAR-10 / CIFAR-100 python versions (archive or extracted folder), read with
an unpickler that accepts only plain data and numpy arrays, and the CIFAR-10 download."""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..download import download as fetch
from ..errors import DataError, PrunelabError
from ..fileio import cache_dir
from .dataset import ImageData, one_line, show

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
BATCH_FILES = [*TRAIN_BATCHES, "test_batch", "batches.meta"]
SIZE = 32


@dataclass(frozen=True)
class Format:
    """Where one official python version keeps its batches, labels and class names."""

    name: str
    archive: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels_key: bytes
    names_key: bytes

    @property
    def files(self) -> list[str]:
        return [*self.train, self.test, self.meta]


CIFAR10_FORMAT = Format(
    "CIFAR-10", ARCHIVE, BATCH_DIR, tuple(TRAIN_BATCHES), "test_batch", "batches.meta",
    b"labels", b"label_names",
)  # fmt: skip
CIFAR100_FORMAT = Format(
    "CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", "meta",
    b"fine_labels", b"fine_label_names",
)  # fmt: skip
FORMATS = (CIFAR10_FORMAT, CIFAR100_FORMAT)

_reconstruct = np.empty(0).__reduce__()[0]
_frombuffer = np.empty(0).__reduce_ex__(5)[0]
_SAFE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): codecs.encode,
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickle only plain data and numpy arrays: a data file must never run code."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(data: bytes, name: str, fmt: Format) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any failure to unpickle means the file is corrupt
        raise DataError(f"{name}: corrupt or truncated {fmt.name} pickle ({one_line(e)})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _class_names(data: bytes, name: str, fmt: Format) -> list[str]:
    meta = _unpickle(data, name, fmt)
    raw = meta.get(fmt.names_key, [])
    names = [n.decode() if isinstance(n, bytes) else n for n in raw]
    if fmt is CIFAR10_FORMAT and names != CLASSES:
        raise DataError(f"{name}: label_names {names}, expected {CLASSES}")
    if len(names) < 2 or not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
        raise DataError(f"{name}: {fmt.names_key!r} must list at least 2 distinct class names")
    return names


def _parse_batch(data: bytes, name: str, fmt: Format, n_classes: int):
    """Channel-major R, G, B planes of 32x32 per row -> N x 3 x 32 x 32, and the labels."""
    d = _unpickle(data, name, fmt)
    x, y = d.get(b"data"), d.get(fmt.labels_key)
    bad = DataError(
        f"{name}: not a {fmt.name} batch (expected b'data' uint8 N x 3072 and "
        f"{fmt.labels_key!r} with N ints in 0..{n_classes - 1})"
    )
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise bad
    try:
        labels = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise bad from e
    in_range = not labels.size or 0 <= labels.min() <= labels.max() < n_classes
    if labels.shape != (len(x),) or not in_range:
        raise bad
    return x.reshape(-1, 3, SIZE, SIZE), labels


def _build(files: dict[str, bytes], where: str, source: str, fmt: Format) -> ImageData:
    missing = [n for n in fmt.files if n not in files]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} (expected {', '.join(fmt.files)})")
    classes = _class_names(files[fmt.meta], f"{where}/{fmt.meta}", fmt)
    train = [_parse_batch(files[n], f"{where}/{n}", fmt, len(classes)) for n in fmt.train]
    test_x, test_y = _parse_batch(files[fmt.test], f"{where}/{fmt.test}", fmt, len(classes))
    return ImageData(
        train_x=torch.from_numpy(np.concatenate([b[0] for b in train])),
        train_y=torch.from_numpy(np.concatenate([b[1] for b in train])),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_y=torch.from_numpy(test_y),
        classes=classes,
        source=source,
    )


def load_batch_dir(folder: Path, fmt: Format) -> ImageData:
    """An extracted folder (cifar-10-batches-py/ or cifar-100-python/)."""
    files = {}
    for name in fmt.files:
        path = folder / name
        if path.is_file():
            try:
                files[name] = path.read_bytes()
            except OSError as e:
                raise DataError(f"{show(path)}: cannot read ({one_line(e)})") from e
    where = show(folder)
    return _build(files, where, f"{where} ({fmt.name} python batches)", fmt)


def load_archive(path: Path, source: str | None = None) -> ImageData:
    """Read the batches straight out of the tar.gz in one pass; its content says which format."""
    wanted = {n for fmt in FORMATS for n in fmt.files}
    files = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted:
                    files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{show(path)}: corrupt or truncated archive ({one_line(e)})") from e
    fmt = CIFAR100_FORMAT if CIFAR100_FORMAT.meta in files else CIFAR10_FORMAT
    where = show(path)
    return _build(files, where, source or f"{where} ({fmt.name} python archive)", fmt)


def find_official(root: Path) -> ImageData | None:
    """Load `root` if it holds an official python version (folder, batches or archive)."""
    for fmt in FORMATS:
        if (root / fmt.folder).is_dir():
            return load_batch_dir(root / fmt.folder, fmt)
    if any((root / name).is_file() for name in BATCH_FILES):
        return load_batch_dir(root, CIFAR10_FORMAT)
    if (root / CIFAR100_FORMAT.meta).is_file() and (root / CIFAR100_FORMAT.test).is_file():
        return load_batch_dir(root, CIFAR100_FORMAT)
    for fmt in FORMATS:
        if (root / fmt.archive).is_file():
            return load_archive(root / fmt.archive)
    return None


def default_data_root(cache: str | os.PathLike | None = None) -> Path:
    """Where CIFAR-10 is downloaded to and decoded copies are kept: <cache dir>/data."""
    return cache_dir(cache) / "data"


def load_from_cache_dir(cache: str | os.PathLike | None, download: bool) -> ImageData:
    """CIFAR-10 from the cache, downloaded (md5-checked) first when absent and allowed."""
    archive = default_data_root(cache) / ARCHIVE
    if download:
        try:
            fetch(URL, archive, MD5, algo="md5")
        except DataError:
            raise
        except PrunelabError as e:
            raise DataError(str(e)) from e
    elif not archive.is_file():
        raise DataError(f"{archive}: not found; pass the CIFAR-10 folder or allow the download")
    return load_archive(archive, f"{archive} (CIFAR-10 python archive from {URL})")
