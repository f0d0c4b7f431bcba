"""CIFAR-10: load the official python batches or an image-folder tree, cache decoded images, and
augment whole batches with tensor ops (random crop with zero padding 4, horizontal flip)."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .download import download as fetch
from .errors import DataError, PrunelabError
from .fileio import atomic_path, cache_dir

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
BATCH_FILES = [*TRAIN_BATCHES, "test_batch", "batches.meta"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIZE = 32
PAD = 4
CACHE_MAGIC = "prunelab-cifar10-images-v1"
LAYOUTS = (
    f"expected the official python version ({ARCHIVE}, or {BATCH_DIR}/ holding "
    "data_batch_1..5, test_batch, batches.meta) or an image-folder tree "
    "(train/<class>/*.png|jpg and test/<class>/*.png|jpg)"
)


@dataclass
class CIFAR10:
    """The data set as uint8 N x 3 x 32 x 32 images and int64 labels, plus where it came from."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str

    def fingerprint(self) -> str:
        """Short sha256 of the four arrays, so a run can record exactly which data it used."""
        return _digest([t.detach().cpu().numpy() for t in self._arrays()])[:16]

    def _arrays(self) -> list[torch.Tensor]:
        return [self.train_x, self.train_y, self.test_x, self.test_y]


def load_cifar10(
    root: str | os.PathLike | None, cache: str | os.PathLike | None = None, download: bool = True
) -> CIFAR10:
    """Load CIFAR-10 from `root` (either layout), or from / into the cache when `root` is None."""
    if root is None:
        return _load_from_cache_dir(cache, download)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: does not exist; {LAYOUTS}")
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        return _load_archive(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; {LAYOUTS}")
    if (root / BATCH_DIR).is_dir():
        return _load_batch_dir(root / BATCH_DIR)
    if any((root / name).is_file() for name in BATCH_FILES):
        return _load_batch_dir(root)
    if (root / ARCHIVE).is_file():
        return _load_archive(root / ARCHIVE)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _load_image_folders(root, cache)
    raise DataError(f"{root}: no CIFAR-10 data found; {LAYOUTS}")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --- official python batches -------------------------------------------------------------------

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


def _unpickle(data: bytes, name: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any failure to unpickle means the file is corrupt
        raise DataError(f"{name}: corrupt or truncated CIFAR-10 pickle ({_one_line(e)})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _parse_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Channel-major R, G, B planes of 32x32 per row -> N x 3 x 32 x 32."""
    d = _unpickle(data, name)
    x, y = d.get(b"data"), d.get(b"labels")
    expected = "b'data' uint8 N x 3072 and b'labels' with N ints in 0..9"
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"{name}: not a CIFAR-10 batch (expected {expected})")
    try:
        labels = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name}: not a CIFAR-10 batch (expected {expected})") from e
    if labels.shape != (len(x),) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{name}: not a CIFAR-10 batch (expected {expected})")
    return x.reshape(-1, 3, SIZE, SIZE), labels


def _build(files: dict[str, bytes], where: str, source: str) -> CIFAR10:
    missing = [n for n in BATCH_FILES if n not in files]
    if missing:
        raise DataError(
            f"{where}: missing {', '.join(missing)} (expected {', '.join(BATCH_FILES)})"
        )
    meta = _unpickle(files["batches.meta"], f"{where}/batches.meta")
    names = [n.decode() if isinstance(n, bytes) else n for n in meta.get(b"label_names", [])]
    if names != CLASSES:
        raise DataError(f"{where}/batches.meta: label_names {names}, expected {CLASSES}")
    train = [_parse_batch(files[n], f"{where}/{n}") for n in TRAIN_BATCHES]
    test_x, test_y = _parse_batch(files["test_batch"], f"{where}/test_batch")
    return CIFAR10(
        train_x=torch.from_numpy(np.concatenate([b[0] for b in train])),
        train_y=torch.from_numpy(np.concatenate([b[1] for b in train])),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_y=torch.from_numpy(test_y),
        classes=list(CLASSES),
        source=source,
    )


def _load_batch_dir(folder: Path) -> CIFAR10:
    files = {}
    for name in BATCH_FILES:
        path = folder / name
        if path.is_file():
            try:
                files[name] = path.read_bytes()
            except OSError as e:
                raise DataError(f"{path}: cannot read ({_one_line(e)})") from e
    return _build(files, str(folder), f"{folder} (CIFAR-10 python batches)")


def _load_archive(path: Path, source: str | None = None) -> CIFAR10:
    """Read the batches straight out of the tar.gz, in archive order (one pass, nothing on disk)."""
    files = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in BATCH_FILES:
                    files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated archive ({_one_line(e)})") from e
    return _build(files, str(path), source or f"{path} (CIFAR-10 python archive)")


def _load_from_cache_dir(cache: str | os.PathLike | None, download: bool) -> CIFAR10:
    archive = cache_dir(cache) / "data" / ARCHIVE
    if download:
        try:
            fetch(URL, archive, MD5, algo="md5")
        except DataError:
            raise
        except PrunelabError as e:
            raise DataError(str(e)) from e
    elif not archive.is_file():
        raise DataError(f"{archive}: not found; pass the CIFAR-10 folder or allow the download")
    return _load_archive(archive, f"{archive} (CIFAR-10 python archive from {URL})")


# --- image-folder tree -------------------------------------------------------------------------


def _list_images(root: Path) -> tuple[dict[str, tuple[list[str], list[int]]], str]:
    """Files per split sorted by name, their labels, and a key over path, names, sizes, mtimes."""
    h = hashlib.sha256(f"{CACHE_MAGIC}\n{root.resolve()}\n".encode())
    splits = {}
    for split in ("train", "test"):
        folder = root / split
        found = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if found != sorted(CLASSES):
            raise DataError(f"{folder}: found class folders {found}, expected {CLASSES}")
        paths, labels = [], []
        for label, cls in enumerate(CLASSES):
            with os.scandir(folder / cls) as it:
                entries = [e for e in it if _is_image_name(e.name)]
            if not entries:
                raise DataError(f"{folder / cls}: no .png/.jpg images")
            for e in sorted(entries, key=lambda e: e.name):
                st = e.stat()
                h.update(f"{split}/{cls}/{e.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
                paths.append(e.path)
                labels.append(label)
        splits[split] = (paths, labels)
    return splits, h.hexdigest()


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _decode_images(paths: list[str]) -> np.ndarray:
    """Decode to N x 3 x 32 x 32 uint8, serially: a thread pool was slower on tiny JPEGs (GIL)."""
    out = np.empty((len(paths), 3, SIZE, SIZE), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                if im.size != (SIZE, SIZE):
                    w, h = im.size
                    raise DataError(f"{path}: image is {w}x{h}, expected {SIZE}x{SIZE}")
                out[i] = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable files
            raise DataError(f"{path}: unreadable image ({_one_line(e)})") from e
    return out


def _digest(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _write_cache(path: Path, arrays: list[np.ndarray]) -> None:
    """A sequence of .npy records in one file: loads with np.load(file) without zip overhead."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.array([CACHE_MAGIC, _digest(arrays)]))
        for a in arrays:
            np.save(f, a)


def _read_cache(path: Path) -> list[np.ndarray]:
    """Read and verify (sha256, ~0.1 s) a cache file; a damaged one is refused, never used."""
    bad = f"{path}: corrupt or truncated cache file; delete it and load again"
    try:
        with open(path, "rb") as f:
            head = np.load(f, allow_pickle=False)
            arrays = [np.load(f, allow_pickle=False) for _ in range(4)]
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{bad} ({_one_line(e)})") from e
    if head.shape != (2,) or head[0] != CACHE_MAGIC or _digest(arrays) != head[1]:
        raise DataError(f"{bad} (checksum mismatch)")
    return arrays


def _load_image_folders(root: Path, cache: str | os.PathLike | None) -> CIFAR10:
    splits, key = _list_images(root)
    path = cache_dir(cache) / "data" / f"cifar10-images-{key[:20]}.npys"
    if path.exists():
        arrays = _read_cache(path)
        source = f"{root} (image folders, decoded copy {path})"
    else:
        arrays = []
        for paths, labels in splits.values():
            arrays += [_decode_images(paths), np.asarray(labels, dtype=np.int64)]
        source = f"{root} (image folders)"
        try:
            _write_cache(path, arrays)
        except OSError as e:
            warnings.warn(f"could not cache decoded CIFAR-10 in {path}: {e}", stacklevel=3)
    t = [torch.from_numpy(a) for a in arrays]
    return CIFAR10(t[0], t[1], t[2], t[3], classes=list(CLASSES), source=source)


# --- batches -----------------------------------------------------------------------------------


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding 4 and random horizontal flip, per image, as one gather."""
    if x.ndim != 4:
        raise ValueError(f"augment expects N x C x H x W images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    oy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=gen_dev).to(x.device)
    ox = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=gen_dev).to(x.device)
    flip = (torch.rand(n, generator=generator, device=gen_dev) < 0.5).to(x.device)
    wp = w + 2 * PAD
    padded = F.pad(x, (PAD, PAD, PAD, PAD)).reshape(n, c, (h + 2 * PAD) * wp)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, idx).reshape(n, c, h, w)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]; no mean/std normalisation (what the pretrained model expects)."""
    if x.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 images, got {x.dtype} (already converted?)")
    return x.float() / 255


def split_validation(
    x: torch.Tensor, y: torch.Tensor, n_val: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out a seeded random `n_val` images: (train_x, train_y, val_x, val_y)."""
    if not 0 <= n_val <= len(x):
        raise DataError(f"n_val={n_val}: must be between 0 and {len(x)} (the training images)")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
    return x[train], y[train], x[val], y[val]


def subset(
    x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded class-balanced subset of `n` images (the remainder goes to the first classes)."""
    labels = y.unique().tolist()
    if n < 0 or (n and not labels):
        raise DataError(f"subset of {n}: need n >= 0 and a non-empty data set")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    y_perm = y[perm]
    picks = []
    for i, label in enumerate(labels):
        want = n // len(labels) + (i < n % len(labels))
        idx = perm[y_perm == label][:want]
        if len(idx) < want:
            raise DataError(f"subset of {n}: class {label} has only {len(idx)} images, need {want}")
        picks.append(idx)
    idx = torch.cat(picks).sort().values if picks else torch.zeros(0, dtype=torch.long)
    return x[idx], y[idx]
