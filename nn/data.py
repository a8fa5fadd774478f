"""Data: IDX and CSV loaders, finding the data sets on disk, and downloading them safely.

Decisions:

* Pixels become float32 in [0, 1] by ``uint8 / 255`` (a division, not a multiplication by
  1/255), which is exactly what torchvision's ToTensor computes, so the hand-built sets and the
  torch-autograd reference see bit-identical inputs.
* Downloads are checked against the sha256 of the *decompressed* content: Debian's
  dataset-fashion-mnist re-compresses the files, so two correct copies can have different .gz
  checksums. The published md5 of the original .gz is accepted too (the only checksum known
  for MNIST's training files). A download is written to a temporary file in the target folder
  and renamed only once verified, so no partial or wrong file is ever left behind.
* Every problem with a file (missing, truncated, corrupt gzip, wrong magic number, image and
  label counts that differ, non-numeric CSV cells) is a UsageError naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UsageError

# ---------------------------------------------------------------------------- known data sets

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Source:
    """A data set published as four IDX files, where it is installed, and where to fetch it."""

    name: str                       # as on the command line
    title: str                      # as in messages
    subdir: str                     # folder name looked for under each data root
    system_dir: str | None          # where a distribution package installs it
    install_hint: str               # how to install it without the network
    mirrors: tuple[str, ...]
    sha256: dict[str, str]          # file stem -> sha256 of the decompressed content
    md5_gz: dict[str, str]          # file stem -> published md5 of the original .gz
    classes: tuple[str, ...] = field(default=tuple(str(i) for i in range(10)))


SOURCES = {
    "fashion-mnist": Source(
        name="fashion-mnist",
        title="Fashion-MNIST",
        subdir="fashion-mnist",
        system_dir="/usr/share/datasets/fashion-mnist",
        install_hint="install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        md5_gz={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "mnist": Source(
        name="mnist",
        title="MNIST",
        subdir="mnist",
        system_dir=None,
        install_hint="download the four files by hand from an MNIST mirror",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        sha256={
            # The test set's, from ../shared/data/mnist; the training files' are not known here,
            # so they are checked by the published md5 of the .gz alone.
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        md5_gz={
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}

# Base URLs (comma-separated) tried instead of a data set's own mirrors: tests point this at a
# local HTTP server; a user can point it at a private mirror.
MIRRORS_ENV = "NN_DATA_MIRRORS"


@dataclass
class Dataset:
    """A data set in memory: images as float32 (N, features) in [0, 1], labels as int64 (N,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    files: dict[str, str]           # role -> path it was read from

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])


# ---------------------------------------------------------------------------- IDX

_IDX_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (recognised by its magic, not its name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"data file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise UsageError(f"data file {path} is a truncated or corrupt gzip file ({exc}); delete it and fetch it again") from None


def parse_idx(content: bytes, path, ndim: int) -> np.ndarray:
    """An IDX file's array of unsigned bytes, checked: magic number, dimensions, exact length."""
    # header: 0x00 0x00, type code (0x08 = unsigned byte), ndim; then ndim big-endian int32 sizes
    if len(content) < 4:
        raise UsageError(f"data file {path} is too short to be an IDX file ({len(content)} bytes)")
    zero, dtype, got_ndim = content[:2], content[2], content[3]
    if zero != b"\x00\x00" or dtype != _IDX_UBYTE or got_ndim != ndim:
        magic = int.from_bytes(content[:4], "big")
        want = (_IDX_UBYTE << 8) | ndim
        kind = "images" if ndim == 3 else "labels"
        raise UsageError(
            f"data file {path} has magic number 0x{magic:08x}, expected 0x{want:08x} for IDX {kind}; "
            "it is not the IDX file it is named as"
        )
    header = 4 + 4 * ndim
    if len(content) < header:
        raise UsageError(f"data file {path} is truncated inside its IDX header")
    dims = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(content) - header
    if body < expected:
        raise UsageError(
            f"data file {path} is truncated: its header promises {dims} = {expected} bytes, found {body}"
        )
    if body > expected:
        raise UsageError(
            f"data file {path} has {body - expected} bytes beyond the {dims} its header declares; it is corrupt"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def load_idx(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, rows*cols) in [0, 1], labels int64 (N,)) from an IDX pair, .gz or raw."""
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = parse_idx(_read_bytes(images_path), images_path, ndim=3)
    labels = parse_idx(_read_bytes(labels_path), labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise UsageError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels; "
            "they must be the same set"
        )
    if images.shape[0] == 0:
        raise UsageError(f"data file {images_path} holds no images")
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)
    return x, labels.astype(np.int64)


# ---------------------------------------------------------------------------- CSV


def load_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 784) in [0, 1], labels int64 (N,)) from a CSV: label, then 784 pixels
    (0-255) per row, with or without a header row (Kaggle's Digit Recognizer train.csv and
    fashion-mnist_train.csv layouts)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except FileNotFoundError:
        raise UsageError(f"CSV file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read CSV file {path}: {exc.strerror or exc}") from None
    if not first.strip():
        raise UsageError(f"CSV file {path} is empty")
    cells = [c.strip() for c in first.split(",")]
    header = not _is_number(cells[0])          # "label" (both layouts) rather than a digit
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, skiprows=1 if header else 0, ndmin=2)
    except ValueError as exc:
        # numpy names the cell: "could not convert string 'x' to float64 at row 3, column 5"
        detail = str(exc).splitlines()[-1] if str(exc) else "malformed row"
        raise UsageError(f"CSV file {path} has a bad cell: {detail}") from None
    if table.shape[0] == 0:
        raise UsageError(f"CSV file {path} has a header but no rows")
    if table.shape[1] != 785:
        raise UsageError(
            f"CSV file {path} has {table.shape[1]} columns; expected 785 (a label, then 784 pixel values). "
            "A file without a label column (such as Kaggle's test.csv) cannot be trained on"
        )
    labels, pixels = table[:, 0], table[:, 1:]
    if np.any(labels != np.round(labels)) or labels.min() < 0:
        raise UsageError(f"CSV file {path}: labels (first column) must be non-negative integers")
    if np.any(pixels != np.round(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise UsageError(f"CSV file {path}: pixel values must be integers from 0 to 255")
    x = pixels.astype(np.uint8).astype(np.float32) / np.float32(255)
    return x, labels.astype(np.int64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------- finding files


def search_roots(data_dir=None) -> list[Path]:
    """Where data sets are looked for, in order: --data-dir, ./data, then the system folder."""
    roots = [Path(data_dir)] if data_dir else []
    roots.append(Path("data"))
    return roots


def _candidates(source: Source, data_dir=None) -> list[Path]:
    dirs = []
    for root in search_roots(data_dir):
        dirs += [root, root / source.subdir]
    if source.system_dir:
        dirs.append(Path(source.system_dir))
    return dirs


def _find_in(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (each as .gz or raw), or None when any is missing."""
    found = {}
    for role, stem in FILES.items():
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                found[role] = folder / name
                break
        else:
            return None
    return found


def locate(name: str, data_dir=None) -> dict[str, Path] | None:
    """The four files of data set ``name``, from the first folder that holds all of them."""
    for folder in _candidates(SOURCES[name], data_dir):
        found = _find_in(folder)
        if found:
            return found
    return None


# ---------------------------------------------------------------------------- downloading


def mirrors_for(source: Source, mirrors=None) -> list[str]:
    if mirrors is None and os.environ.get(MIRRORS_ENV):
        mirrors = [m.strip() for m in os.environ[MIRRORS_ENV].split(",") if m.strip()]
    mirrors = list(source.mirrors if mirrors is None else mirrors)
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def _verify(source: Source, stem: str, path: Path) -> str | None:
    """None if the downloaded .gz at ``path`` is the published file, else what is wrong."""
    raw = path.read_bytes()
    if source.md5_gz.get(stem) == hashlib.md5(raw).hexdigest():
        return None
    want = source.sha256.get(stem)
    if want is None:
        return "its md5 does not match the published one"
    try:
        content = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error):
        return "it is not a complete gzip file"
    if hashlib.sha256(content).hexdigest() != want:
        return "the sha256 of its content does not match"
    return None


def _fetch(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)


def download(name: str, dest_dir, mirrors=None, timeout: float = 30.0, log=print) -> dict[str, Path]:
    """Fetch data set ``name``'s four .gz files into ``dest_dir``, verified, atomically.

    Each file goes to a temporary file beside its final name and is renamed once its checksum
    matches, so an interrupted or wrong download never leaves a file that looks complete.
    Raises UsageError when no mirror gives a correct copy of some file.
    """
    source = SOURCES[name]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    found = {}
    for role, stem in FILES.items():
        final = dest_dir / (stem + ".gz")
        if final.is_file():
            found[role] = final
            continue
        problems = []
        for base in mirrors_for(source, mirrors):
            url = base + stem + ".gz"
            fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{stem}.", suffix=".part")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                log(f"downloading {url}")
                _fetch(url, tmp, timeout)
                wrong = _verify(source, stem, tmp)
                if wrong:
                    problems.append(f"{url}: {wrong}")
                    continue
                os.replace(tmp, final)
                found[role] = final
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                problems.append(f"{url}: {reason}")
            finally:
                if tmp.exists():
                    tmp.unlink()
        else:
            raise UsageError(
                f"{source.title} is not installed and could not be downloaded "
                f"({'; '.join(problems) or 'no mirror configured'}). Either {source.install_hint}, "
                f"or put {', '.join(s + '.gz' for s in FILES.values())} in --data-dir or ./data"
            )
    return found


# ---------------------------------------------------------------------------- loading a data set


def parse_spec(spec: str) -> tuple[str, list[Path]]:
    """('fashion-mnist' | 'mnist' | 'csv', csv paths) from a --dataset value."""
    if spec in SOURCES:
        return spec, []
    if spec.startswith("csv:"):
        paths = [Path(p) for p in spec[4:].split(",") if p]
        if not 1 <= len(paths) <= 2:
            raise UsageError(f"--dataset {spec!r}: use csv:TRAIN.csv or csv:TRAIN.csv,TEST.csv")
        return "csv", paths
    raise UsageError(f"--dataset {spec!r} is not one of: {', '.join(SOURCES)}, csv:PATH")


def load_dataset(spec: str, data_dir=None, allow_download: bool = True, mirrors=None, log=print) -> Dataset:
    """The data set a --dataset value names, located (or downloaded) and loaded.

    csv:TRAIN[,TEST]: without TEST, a sibling file named like TRAIN with 'train' replaced by
    'test' is used when it exists; otherwise the last seventh of TRAIN's rows is the test set
    (60,000 : 10,000, as in MNIST).
    """
    kind, paths = parse_spec(spec)
    if kind == "csv":
        return _load_csv_dataset(spec, paths)
    source = SOURCES[kind]
    files = locate(kind, data_dir)
    if files is None:
        looked = ", ".join(str(p) for p in _candidates(source, data_dir))
        if not allow_download:
            raise UsageError(
                f"{source.title} not found (looked in {looked}); {source.install_hint}, "
                "or put its four IDX files in --data-dir"
            )
        dest = Path(data_dir) if data_dir else Path("data") / source.subdir
        log(f"{source.title} not found in {looked}; downloading it to {dest}")
        files = download(kind, dest, mirrors=mirrors, log=log)
    x_train, y_train = load_idx(files["train_images"], files["train_labels"])
    x_test, y_test = load_idx(files["test_images"], files["test_labels"])
    if x_train.shape[1] != x_test.shape[1]:
        raise UsageError(
            f"training images have {x_train.shape[1]} pixels but test images {x_test.shape[1]}; "
            "the files come from different data sets"
        )
    return Dataset(kind, x_train, y_train, x_test, y_test, source.classes,
                   {role: str(p) for role, p in files.items()})


def _load_csv_dataset(spec: str, paths: list[Path]) -> Dataset:
    train_path = paths[0]
    test_path = paths[1] if len(paths) > 1 else None
    if test_path is None and "train" in train_path.name:
        sibling = train_path.with_name(train_path.name.replace("train", "test"))
        # only a sibling that has labels; Kaggle's test.csv has none and is left alone
        if sibling.is_file() and _has_label_column(sibling):
            test_path = sibling
    x, y = load_csv(train_path)
    files = {"train": str(train_path)}
    if test_path is not None:
        x_test, y_test = load_csv(test_path)
        files["test"] = str(test_path)
    else:
        if len(y) < 2:
            raise UsageError(f"CSV file {train_path} has {len(y)} row; at least 2 are needed to hold out a test set")
        cut = len(y) - max(1, len(y) // 7)
        x, x_test, y, y_test = x[:cut], x[cut:], y[:cut], y[cut:]
    classes = int(max(y.max(), y_test.max())) + 1
    return Dataset("csv", x, y, x_test, y_test, tuple(str(i) for i in range(max(classes, 2))), files)


def _has_label_column(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        line = f.readline()
        if not _is_number(line.split(",")[0].strip()):
            line = f.readline()
    return len(line.split(",")) == 785
