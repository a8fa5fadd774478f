"""nn.data: the IDX and CSV loaders on the real MNIST test files and on broken copies of them,
finding data sets on disk, and the download path against a local HTTP server."""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import MNIST, requires_mnist
from nn import data
from nn.errors import UsageError

IMAGES = MNIST / "t10k-images-idx3-ubyte.gz"
LABELS = MNIST / "t10k-labels-idx1-ubyte.gz"
FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = requires_mnist()


@functools.lru_cache(maxsize=None)
def raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def write(path: Path, content: bytes, gz=False) -> Path:
    path.write_bytes(gzip.compress(content, compresslevel=1) if gz else content)
    return path


def idx_header(magic: int, *dims: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


# ---------------------------------------------------------------------------- IDX on real files


def test_idx_loads_the_real_mnist_test_set():
    x, y = data.load_idx(IMAGES, LABELS)
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]     # the well-known first test digits
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # exactly torchvision's ToTensor scaling: uint8 / 255 in float32
    pixels = np.frombuffer(raw(IMAGES), np.uint8, offset=16).reshape(10000, 784)
    assert np.array_equal(x, pixels.astype(np.float32) / np.float32(255))


def test_idx_reads_uncompressed_files_the_same(tmp_path):
    images = write(tmp_path / "t10k-images-idx3-ubyte", raw(IMAGES))
    labels = write(tmp_path / "t10k-labels-idx1-ubyte", raw(LABELS))
    x, y = data.load_idx(images, labels)
    x_gz, y_gz = data.load_idx(IMAGES, LABELS)
    assert np.array_equal(x, x_gz) and np.array_equal(y, y_gz)


# ---------------------------------------------------------------------------- IDX on broken files


def test_truncated_gzip(tmp_path):
    images = write(tmp_path / "images.gz", IMAGES.read_bytes()[: 100_000])
    with pytest.raises(UsageError, match="truncated or corrupt gzip"):
        data.load_idx(images, LABELS)


def test_truncated_raw_file(tmp_path):
    images = write(tmp_path / "images", raw(IMAGES)[:-784])
    with pytest.raises(UsageError, match="truncated.*7840000 bytes, found 7839216"):
        data.load_idx(images, LABELS)


def test_trailing_bytes(tmp_path):
    labels = write(tmp_path / "labels", raw(LABELS) + b"\x00")
    with pytest.raises(UsageError, match="1 bytes beyond"):
        data.load_idx(IMAGES, labels)


def test_wrong_magic_number(tmp_path):
    # images and labels swapped: each file's magic says what it is
    with pytest.raises(UsageError, match="magic number 0x00000801, expected 0x00000803"):
        data.load_idx(LABELS, IMAGES)
    not_idx = write(tmp_path / "images", b"<html>not found</html>" * 10)
    with pytest.raises(UsageError, match="magic number"):
        data.load_idx(not_idx, LABELS)


def test_image_label_count_mismatch(tmp_path):
    labels = write(tmp_path / "labels.gz", idx_header(0x801, 9999) + raw(LABELS)[8:-1], gz=True)
    with pytest.raises(UsageError, match="10000 images but .* 9999 labels"):
        data.load_idx(IMAGES, labels)


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        data.load_idx(tmp_path / "nope.gz", LABELS)


# ---------------------------------------------------------------------------- CSV


def csv_rows(n=50):
    x = np.frombuffer(raw(IMAGES), np.uint8, offset=16).reshape(10000, 784)[:n]
    y = np.frombuffer(raw(LABELS), np.uint8, offset=8)[:n]
    return [",".join(map(str, [label, *pixels])) for label, pixels in zip(y, x)]


@pytest.mark.parametrize("header", ["label," + ",".join(f"pixel{i}" for i in range(784)), None],
                         ids=["kaggle-header", "no-header"])
def test_csv_matches_idx(tmp_path, header):
    lines = ([header] if header else []) + csv_rows()
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    x, y = data.load_csv(path)
    x_idx, y_idx = data.load_idx(IMAGES, LABELS)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x, x_idx[:50]) and np.array_equal(y, y_idx[:50])


def test_csv_with_non_numeric_cell(tmp_path):
    lines = csv_rows(5)
    lines[3] = lines[3].replace(",0,", ",zero,", 1)
    path = tmp_path / "train.csv"
    path.write_text("label," + ",".join(f"p{i}" for i in range(784)) + "\n" + "\n".join(lines))
    with pytest.raises(UsageError, match="bad cell.*zero"):
        data.load_csv(path)


def test_csv_without_label_column(tmp_path):
    # Kaggle's test.csv: 784 pixels, no label
    path = tmp_path / "test.csv"
    path.write_text("\n".join(line.split(",", 1)[1] for line in csv_rows(3)))
    with pytest.raises(UsageError, match="784 columns; expected 785"):
        data.load_csv(path)


def test_csv_pixels_out_of_range(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("3," + ",".join(["300"] * 784) + "\n")
    with pytest.raises(UsageError, match="0 to 255"):
        data.load_csv(path)


def test_csv_dataset_uses_the_sibling_test_file_or_holds_out(tmp_path):
    rows = csv_rows(70)
    (tmp_path / "fashion-mnist_train.csv").write_text("\n".join(rows[:60]))
    ds = data.load_dataset(f"csv:{tmp_path / 'fashion-mnist_train.csv'}")
    assert len(ds.y_train) == 52 and len(ds.y_test) == 8       # no test file: last seventh held out
    (tmp_path / "fashion-mnist_test.csv").write_text("\n".join(rows[60:]))
    ds = data.load_dataset(f"csv:{tmp_path / 'fashion-mnist_train.csv'}")
    assert len(ds.y_train) == 60 and len(ds.y_test) == 10 and ds.classes == tuple(map(str, range(10)))


# ---------------------------------------------------------------------------- locating


def test_locate_prefers_data_dir(tmp_path):
    for src in (IMAGES, LABELS):
        for stem in ("train", "t10k"):
            (tmp_path / src.name.replace("t10k", stem)).symlink_to(src)
    found = data.locate("mnist", tmp_path)
    assert found["train_images"] == tmp_path / "train-images-idx3-ubyte.gz"
    ds = data.load_dataset("mnist", tmp_path, allow_download=False)
    assert ds.x_train.shape == (10000, 784) and ds.classes == tuple(map(str, range(10)))


@pytest.mark.skipif(not FASHION.exists(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)             # no ./data here
    found = data.locate("fashion-mnist", tmp_path / "empty")
    assert found["train_images"] == FASHION / "train-images-idx3-ubyte.gz"
    # Debian re-compresses: its .gz md5 differs from the published one, the content's sha256 matches
    src = data.SOURCES["fashion-mnist"]
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        path = FASHION / (stem + ".gz")
        assert hashlib.md5(path.read_bytes()).hexdigest() != src.md5_gz[stem]
        assert data._verify(src, stem, path) is None


# ---------------------------------------------------------------------------- downloading


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """(folder served, its URL) by an HTTP server on 127.0.0.1."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def mnist_mirror(http_dir, monkeypatch):
    """A mirror holding the real MNIST test files, and copies of them as the training files
    (whose checksums the test registers, since the real training files are not here)."""
    root, url = http_dir
    for src in (IMAGES, LABELS):
        for stem in ("train", "t10k"):
            (root / src.name.replace("t10k", stem)).write_bytes(src.read_bytes())
    src = data.SOURCES["mnist"]
    sha = dict(src.sha256, **{"train-images-idx3-ubyte": hashlib.sha256(raw(IMAGES)).hexdigest(),
                              "train-labels-idx1-ubyte": hashlib.sha256(raw(LABELS)).hexdigest()})
    monkeypatch.setitem(data.SOURCES, "mnist", dataclasses.replace(src, sha256=sha))
    return root, url


def test_download_verifies_and_loads(mnist_mirror, tmp_path, monkeypatch):
    _, url = mnist_mirror
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(data.MIRRORS_ENV, url)
    dest = tmp_path / "dl"
    ds = data.load_dataset("mnist", dest, log=lambda m: None)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f + ".gz" for f in data.FILES.values())
    assert ds.x_test.shape == (10000, 784)
    assert (dest / "t10k-images-idx3-ubyte.gz").read_bytes() == IMAGES.read_bytes()


def test_download_checksum_mismatch_leaves_no_file(mnist_mirror, tmp_path):
    root, url = mnist_mirror
    bad = bytearray(raw(LABELS))
    bad[100] ^= 1
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(bad)))
    dest = tmp_path / "dl"
    with pytest.raises(UsageError, match="t10k-labels-idx1-ubyte.gz: .*does not match"):
        data.download("mnist", dest, mirrors=[url], log=lambda m: None)
    names = sorted(p.name for p in dest.iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in names
    assert not [n for n in names if n.endswith(".part")]          # no partial file either
    assert "t10k-images-idx3-ubyte.gz" in names                   # the good ones were kept


def test_download_falls_back_to_the_next_mirror(mnist_mirror, tmp_path):
    _, url = mnist_mirror
    files = data.download("mnist", tmp_path / "dl", mirrors=["http://127.0.0.1:1/", url], log=lambda m: None)
    assert len(files) == 4


def test_offline_error_names_both_remedies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = data.SOURCES["fashion-mnist"]
    monkeypatch.setitem(data.SOURCES, "fashion-mnist", dataclasses.replace(src, system_dir=str(tmp_path / "none")))
    with pytest.raises(UsageError) as info:
        data.load_dataset("fashion-mnist", tmp_path / "empty", mirrors=["http://127.0.0.1:1/"], log=lambda m: None)
    msg = str(info.value)
    assert "could not be downloaded" in msg and "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert not any((tmp_path / "empty").iterdir())
