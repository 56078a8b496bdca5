"""MNIST IDX files that are damaged or hold no MNIST split: one clear error, never garbage or a traceback."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from hybrid_node.cli import main
from hybrid_node.data.mnist import MNISTFormatError, load_mnist


def write_idx(path, array, code=0x08, dtype=">u1"):
    array = np.asarray(array).astype(dtype)
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(payload + array.tobytes())


def make_split(folder, images=None, labels=None):
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28)) if images is None else images)
    write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, 4) if labels is None else labels)


def test_float_pixels_are_refused_not_cast_to_zero(tmp_path):
    # Were cast to uint8: pixels in [0, 1] all became 0 (a blank data set, trained on silently).
    make_split(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.full((4, 28, 28), 0.75), code=0x0D, dtype=">f4")
    with pytest.raises(MNISTFormatError, match="float32 pixels.*unsigned bytes") as info:
        load_mnist(tmp_path)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("labels", [[0, 1, 2, 10], [0, -1, 2, 3]], ids=["10", "-1"])
def test_labels_outside_the_digits_are_refused(tmp_path, labels):
    # Were loaded; training then failed deep inside the loss ("Target 10 is out of bounds").
    make_split(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, code=0x0C, dtype=">i4")
    with pytest.raises(MNISTFormatError, match="labels .* MNIST labels are the digits 0..9"):
        load_mnist(tmp_path)


def test_a_truncated_gzip_file_is_a_format_error(tmp_path):
    make_split(tmp_path)
    raw = tmp_path / "train-images-idx3-ubyte"
    packed = gzip.compress(raw.read_bytes())
    raw.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(MNISTFormatError, match="not a complete gzip file"):  # was EOFError
        load_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MNISTFormatError, match="not a complete gzip file"):  # was gzip.BadGzipFile
        load_mnist(tmp_path)


def test_good_files_still_load(tmp_path):
    make_split(tmp_path, labels=[0, 9, 3, 3])
    split = load_mnist(tmp_path)
    assert split.images.shape == (4, 28, 28) and split.labels.tolist() == [0, 9, 3, 3]


def test_the_command_reports_a_damaged_file_in_one_line(tmp_path, capsys):
    # Was a ValueError traceback.
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / name).write_bytes(b"garbage!")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"garbage!")
    argv = ["mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "run"), "--iters", "1", "--channels", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "hybrid-node mnist: error:" in err and "is not an IDX file" in err


def test_the_offline_copy_without_zarr_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    # Was an ImportError traceback from `hybrid-node mnist` when the wheel was there but zarr was not.
    import sys

    from hybrid_node.data import mnist as mnist_mod

    monkeypatch.setattr(mnist_mod, "offline_copy_path", lambda: tmp_path / "mnist.zarr.zip")
    monkeypatch.setitem(sys.modules, "zarr", None)  # `import zarr` raises ImportError
    with pytest.raises(ImportError, match="needs zarr"):
        load_mnist(None)
    assert main(["mnist", "--out", str(tmp_path / "run"), "--iters", "1", "--channels", "4"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "hybrid-node mnist: error: Reading the offline MNIST copy needs zarr" in err
