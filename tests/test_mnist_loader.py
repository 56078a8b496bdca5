"""MNIST loader: IDX files written here (plain, gzip, torchvision layout), errors, and the offline copy."""

import gzip
import struct

import numpy as np
import pytest
import torch

from hybrid_node.data import mnist as mnist_mod
from hybrid_node.data.mnist import load_mnist, read_idx, to_float


def write_idx(path, array, compress=False):
    array = np.asarray(array, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


def make_split(folder, train, n, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if train else "t10k"
    ext = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)
    return images, labels


def make_folder(tmp_path, n_train, n_test):
    """A folder ``idx`` under ``tmp_path`` of uncompressed MNIST files: ``n_train`` training and ``n_test``
    test images (random, seeds 1 and 2), for the tests that train on a tiny MNIST."""
    root = tmp_path / "idx"
    root.mkdir()
    make_split(root, True, n_train, seed=1)
    make_split(root, False, n_test, seed=2)
    return root


@pytest.mark.parametrize("compress", [False, True])
def test_reads_idx_files_from_root(tmp_path, compress):
    images, labels = make_split(tmp_path, True, 5, compress)
    split = load_mnist(tmp_path, train=True)
    assert split.images.dtype == torch.uint8 and split.images.shape == (5, 28, 28)
    assert split.labels.dtype == torch.int64
    np.testing.assert_array_equal(split.images.numpy(), images)
    np.testing.assert_array_equal(split.labels.numpy(), labels)
    assert split.source == str(tmp_path)


def test_reads_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _, labels = make_split(raw, False, 3, compress=True)
    split = load_mnist(tmp_path, train=False)
    np.testing.assert_array_equal(split.labels.numpy(), labels)


def test_malformed_idx_raises(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + b"\x00" * 10)
    with pytest.raises(ValueError, match="header announces"):
        read_idx(bad)
    bad.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(bad)


def test_clear_error_when_nothing_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "offline_copy_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="hybrid_node\\[mnist\\]") as err:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_to_float_shape_and_range():
    x = to_float(torch.tensor([[[0, 255]]], dtype=torch.uint8), normalize=False)
    assert x.shape == (1, 1, 1, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor([0.0, 1.0]))


@pytest.mark.skipif(
    mnist_mod.offline_copy_path() is None, reason="offline MNIST wheel (hybrid_node[mnist]) not installed"
)
def test_offline_copy_is_the_real_mnist():
    pytest.importorskip("zarr")
    test = load_mnist(None, train=False)
    assert test.images.shape == (10000, 28, 28) and test.labels.shape == (10000,)
    assert torch.bincount(test.labels, minlength=10).min() > 800
    train = load_mnist(None, train=True)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert train.images.shape == (60000, 28, 28)


def test_a_given_root_without_the_files_is_an_error_not_the_offline_copy(tmp_path, monkeypatch, capsys):
    # Before, a mistyped --data-root silently trained and scored on the offline copy instead.
    fake = mnist_mod.MNISTSplit(torch.zeros(1, 28, 28, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64), "wheel")
    monkeypatch.setattr(mnist_mod, "_from_wheel", lambda train: fake)
    assert load_mnist(None, train=True) is fake  # without root the offline copy is used
    missing = tmp_path / "no-such-folder"
    with pytest.raises(mnist_mod.MNISTNotFoundError, match="does not exist") as err:
        load_mnist(missing, train=True)
    assert isinstance(err.value, FileNotFoundError) and "train-images-idx3-ubyte" in str(err.value)
    make_split(tmp_path, True, 2)  # the training split only: the test split must not come from elsewhere
    assert load_mnist(tmp_path, train=True).source == str(tmp_path)
    with pytest.raises(mnist_mod.MNISTNotFoundError, match="t10k-images-idx3-ubyte.*lacks them"):
        load_mnist(tmp_path, train=False)

    from hybrid_node.cli import main

    out = tmp_path / "run"
    assert main(["mnist", "--data-root", str(missing), "--out", str(out), "--iters", "1", "--channels", "4"]) == 2
    printed = capsys.readouterr().err
    assert "hybrid-node mnist: error: MNIST not found" in printed and "Traceback" not in printed
