"""Datasets for the book's experiments: offline defaults, real loaders, deterministic batches.

Nothing here downloads. The offline defaults are made on the reader's machine; the real loaders read data that
the reader downloaded and say where to get it when it is missing.

Offline classification sets
===========================
``load("mnist1d")``
    MNIST-1D (Greydanus, *Scaling down deep learning*, 2020; https://github.com/greydanus/mnist1d), generated
    locally by the ``mnist1d`` package's ``make_dataset``, which is pure NumPy/SciPy and needs no network (its
    ``get_dataset`` would download a pickle; we never call it). Each example is one of ten 1-D digit
    templates, padded, dilated, scaled, translated, sheared, with correlated and i.i.d. noise, and resampled
    to 40 points. It is a recognised small benchmark built to *separate* architectures and optimizers the way
    MNIST no longer does (the package's README reports logistic regression 32%, an MLP 68%, a CNN 94% test
    accuracy on the standard 5 000-example set), while a whole training run costs seconds to minutes on a
    CPU. Because it is a generator, it can be
    made as large as a large-batch study needs: the paper's question is what happens at batch sizes of
    thousands, and a batch of 8 192 needs a training set of tens of thousands of examples before an epoch
    means anything. :data:`MNIST1D_NUM_SAMPLES` gives the size per profile. Generation is deterministic
    given the seed (the package draws from NumPy's legacy ``MT19937`` global generator, which NumPy keeps
    stream-compatible across versions and platforms; we save and restore that global state so that loading
    data never disturbs the caller's random numbers) and is cached as ``.npz`` under :func:`cache_dir`,
    keyed by every generation argument and the package version. The generator is a Python loop over
    examples, about 0.15 ms of CPU time each (measured on this project's 2-core machine: 5 000 examples in
    1.3 s, 70 000 in 9-12 s of CPU time with an 11 MB cache file, 400 000 with a 66 MB cache file in about
    70 s of CPU time). It runs once per seed and size; a cached load takes milliseconds.

``load("digits")``
    scikit-learn's bundled 8x8 handwritten digits (1 797 images, the UCI optical-recognition test set),
    flattened to 64 features and standardized with the training split's per-pixel mean and standard
    deviation. For the smallest demos only: full-batch training on it takes milliseconds.

Real loaders (the data must be on disk)
=======================================
``load("cifar10", root=...)``, ``load("cifar100", root=...)`` (the official pickled "python version"),
``load("imagenet", root=..., image_size=...)`` and :class:`ImageFolder` (the standard ImageNet folder layout,
decoded with Pillow), and WikiText in :mod:`lamb.experiments.text` (``load_wikitext_mlm``: the original
``wiki.*.raw`` files, or Hugging Face ``datasets``, the optional extra ``lamb[data]``). Each raises
``FileNotFoundError`` saying where to get the data when it is missing.

Batches
=======
:func:`batches` yields one epoch of fixed-size minibatches (the last, short batch is dropped by default, so
that every batch has the same shape under ``jax.jit`` and splits evenly across devices); :func:`batch_stream`
yields batches indefinitely from any step, so a resumed run sees exactly the batches an uninterrupted run
would have seen. The order depends only on ``(seed, epoch)`` through NumPy's ``Generator(PCG64)`` seeded
with ``SeedSequence([seed, epoch])``, which is specified bit-for-bit and so the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lamb.fingerprint import source_fingerprint

__all__ = [
    "Dataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolder",
    "MNIST1D_NUM_SAMPLES",
    "batch_stream",
    "batches",
    "cache_dir",
    "epoch_order",
    "load",
    "load_cifar",
    "load_digits",
    "load_imagenet",
    "load_mnist1d",
    "mnist1d_num_samples",
    "num_batches",
    "rng",
]

#: MNIST-1D sizes (train + test, 80/20 split) per profile. ``smoke`` is the standard benchmark's 5 000; ``cpu``
#: gives 56 000 training examples (7 steps per epoch at batch 8 192, ~220 at batch 256); ``gpu``/``tpu``
#: give 320 000 training examples, ~39 steps per epoch at batch 8 192.
MNIST1D_NUM_SAMPLES = {"smoke": 5_000, "cpu": 70_000, "gpu": 400_000, "tpu": 400_000}


@dataclass(frozen=True)
class Dataset:
    """A classification dataset held in memory as NumPy arrays.

    Inputs are float32 with shape ``(n, *input_shape)``; labels are int32 in ``[0, num_classes)``.
    ``info`` records where the data came from (source, citation, generation or loading arguments).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise ValueError(f"x_{split} has {len(x)} examples but y_{split} has {len(y)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"x_train examples have shape {self.x_train.shape[1:]} but x_test examples have "
                             f"shape {self.x_test.shape[1:]}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input example."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        return len(self.y_test)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.num_train}, test={self.num_test}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


# ---------------------------------------------------------------------------------------------------------------
# Cache and random numbers
# ---------------------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where generated data (MNIST-1D arrays, the MLM tokenizer and token ids) is cached.

    ``$LAMB_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/lamb``, else ``~/.cache/lamb``. Created on demand.
    Deleting it is always safe: everything in it is regenerated.
    """
    env = os.environ.get("LAMB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lamb"


def _cache_key(kind: str, args: dict) -> str:
    """A file-name-safe key for ``args``; JSON with sorted keys, so the key does not depend on dict order."""
    text = json.dumps(args, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _save_npz_atomic(path: Path, **arrays) -> bool:
    """Write ``arrays`` to ``path`` through a temporary file and ``os.replace``, so that a reader never sees
    half a file (two notebooks may generate the same data at once). Returns False, with a warning, when the
    cache directory cannot be written (the data is then simply regenerated next time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return True
    except OSError as error:
        warnings.warn(f"could not cache generated data at {path} ({error}); set LAMB_DATA_DIR to a writable "
                      "directory to keep it", RuntimeWarning, stacklevel=3)
        return False


def rng(*seed: int) -> np.random.Generator:
    """``numpy.random.Generator(PCG64)`` seeded by ``SeedSequence(seed)``: the same stream on every machine.

    ``rng(seed, epoch)`` and ``rng(seed, epoch + 1)`` are independent streams (SeedSequence mixes the whole
    entropy tuple), unlike ``seed + epoch`` schemes where seed 0 epoch 1 collides with seed 1 epoch 0.
    """
    if not seed:
        raise TypeError("rng needs at least one seed, e.g. rng(0)")
    for s in seed:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seed must be non-negative integers, got {seed!r}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(s) for s in seed])))


def _check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# ---------------------------------------------------------------------------------------------------------------
# MNIST-1D
# ---------------------------------------------------------------------------------------------------------------

def mnist1d_num_samples(profile: str | None = None) -> int:
    """The MNIST-1D size (train + test) for ``profile`` (default: ``$LAMB_PROFILE`` or ``"cpu"``)."""
    from lamb import profiles

    profile = profiles.current_profile() if profile is None else profiles.check_profile(profile)
    return MNIST1D_NUM_SAMPLES[profile]


def _generate_mnist1d(args: dict) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView

    full = get_dataset_args(as_dict=True)
    full.update(args)
    # make_dataset reseeds and draws from the global `random`/`np.random` state; restore the caller's.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(ObjectView(full))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x_train": d["x"].astype(np.float32), "y_train": d["y"].astype(np.int32),
            "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int32)}


def load_mnist1d(seed: int = 0, num_samples: int | None = None, *, train_split: float = 0.8,
                 cache: bool = True, **generator_args) -> Dataset:
    """MNIST-1D generated locally (see the module docstring), ``num_samples`` examples split ``train_split``.

    Args:
      seed: the generator's seed (the standard benchmark file was made with 42).
      num_samples: examples in total, a multiple of 10 (the generator makes ``num_samples // 10`` per class);
        default :func:`mnist1d_num_samples` of the current profile.
      train_split: the fraction used for training; the rest is the test set.
      cache: read and write the generated arrays under :func:`cache_dir`.
      **generator_args: other arguments of ``mnist1d.data.get_dataset_args`` (``shuffle_seq``,
        ``iid_noise_scale``, ...), for ablations of the benchmark itself.

    The generator standardizes the signals with the mean and standard deviation of all examples (train and
    test), as the published benchmark does; we keep its definition unchanged.
    """
    seed = _check_int("seed", seed, 0)
    num_samples = mnist1d_num_samples() if num_samples is None else _check_int("num_samples", num_samples, 10)
    if num_samples % 10:
        raise ValueError(f"num_samples must be a multiple of 10 (the generator makes num_samples // 10 "
                         f"examples of each digit), got {num_samples}")
    if not 0.0 < float(train_split) < 1.0:
        raise ValueError(f"train_split must be in (0, 1), got {train_split!r}")
    import mnist1d.data

    allowed = set(mnist1d.data.get_dataset_args(as_dict=True)) - {"num_samples", "seed", "train_split", "url"}
    unknown = set(generator_args) - allowed
    if unknown:
        raise TypeError(f"unknown MNIST-1D generator arguments {sorted(unknown)}; allowed: {sorted(allowed)}")
    args = dict(generator_args, num_samples=num_samples, seed=seed, train_split=float(train_split))
    if int(num_samples * float(train_split)) in (0, num_samples):
        raise ValueError(f"train_split={train_split} leaves an empty split of num_samples={num_samples}")

    version = _package_version("mnist1d")
    # Keyed by the generating code too (this module's source): an edit to it never reads data it made before.
    path = cache_dir() / (_cache_key("mnist1d", dict(args, package_version=version, format=1,
                                                     generator=source_fingerprint("experiments/data.py"))) + ".npz")
    arrays = None
    if cache and path.exists():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, KeyError, ValueError):
            arrays = None  # a damaged cache file: regenerate it
    if arrays is None:
        arrays = _generate_mnist1d(args)
        if cache:
            _save_npz_atomic(path, **arrays)
    info = {"source": "MNIST-1D generated locally by mnist1d.data.make_dataset",
            "citation": "Greydanus, Scaling down deep learning, arXiv:2011.14439 (2020)",
            "generator_args": args, "mnist1d_version": version, "cache_file": str(path) if cache else None}
    return Dataset("mnist1d", num_classes=10, info=info, **arrays)


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------------------------

def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits: 64 standardized features, a stratified train/test split.

    The split takes ``round(test_fraction * n_c)`` examples of each class ``c`` for the test set, chosen by
    :func:`rng` ``(seed)``; features are standardized with the training split's per-pixel mean and standard
    deviation (pixels that are constant on the training split, such as the always-blank corners, are only
    centred: dividing by a zero standard deviation would make them infinite).
    """
    seed = _check_int("seed", seed, 0)
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int32)
    generator = rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        members = np.flatnonzero(y == c)
        test[generator.permutation(members)[:int(round(test_fraction * len(members)))]] = True
    # Shuffle within each split so that classes are interleaved (the bundled file is partly class-ordered).
    train_idx = generator.permutation(np.flatnonzero(~test))
    test_idx = generator.permutation(np.flatnonzero(test))
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x = ((x - mean) / std).astype(np.float32)
    info = {"source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
            "seed": seed, "test_fraction": float(test_fraction)}
    return Dataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=10, info=info)


# ---------------------------------------------------------------------------------------------------------------
# Real image loaders (the data must be on disk)
# ---------------------------------------------------------------------------------------------------------------

_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"],
                 "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"},
}


def _cifar_folder(name: str, root) -> Path:
    spec = _CIFAR[name]
    root = Path(root).expanduser()
    for folder in (root / spec["folder"], root):
        if all((folder / f).is_file() for f in spec["train"] + spec["test"]):
            return folder
    raise FileNotFoundError(
        f"{name.upper()} is not under {root}: expected {spec['folder']}/ with "
        f"{', '.join(spec['train'] + spec['test'])} (the 'python version' of the data set). Get it with\n"
        f"    curl -O {spec['url']} && tar -xzf {spec['url'].rsplit('/', 1)[1]} -C {root}\n"
        "(see https://www.cs.toronto.edu/~kriz/cifar.html).")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    import pickle

    # The official files are Python pickles (of dicts of bytes keys); pickle can run code, so only load
    # files from the official source.
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8)
    if images.ndim != 2 or images.shape[1] != 3072:
        raise ValueError(f"{path}: expected 'data' of shape (n, 3072), got {images.shape}")
    # Each row is the red, green and blue 32x32 planes one after another, each plane row-major.
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(batch[label_key], dtype=np.int32)


def load_cifar(name: str = "cifar10", root=".", *, label_mode: str = "fine", normalize: bool = True) -> Dataset:
    """CIFAR-10 or CIFAR-100 from the official 'python version' files under ``root`` (Krizhevsky 2009).

    ``root`` is the folder that holds ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
    ``test_batch``) or ``cifar-100-python/`` (``train``, ``test``), or that folder itself. Images come back
    NHWC float32 ``(n, 32, 32, 3)`` in [0, 1], standardized per channel with the training set's mean and
    standard deviation when ``normalize``; labels int32. CIFAR-100 has ``label_mode="fine"`` (100 classes)
    or ``"coarse"`` (20 superclasses).
    """
    if name not in _CIFAR:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if name == "cifar10" and label_mode != "fine":
        raise ValueError("label_mode='coarse' exists only for cifar100")
    folder = _cifar_folder(name, root)
    label_key = b"labels" if name == "cifar10" else f"{label_mode}_labels".encode()
    splits = {}
    for split in ("train", "test"):
        parts = [_read_cifar_batch(folder / f, label_key) for f in _CIFAR[name][split]]
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    x_train = splits["train"][0].astype(np.float32) / 255.0
    x_test = splits["test"][0].astype(np.float32) / 255.0
    if normalize:  # in place: CIFAR's training set is 600 MB as float32
        mean, std = x_train.mean(axis=(0, 1, 2)), x_train.std(axis=(0, 1, 2))
        for x in (x_train, x_test):
            x -= mean
            x /= std
    num_classes = 10 if name == "cifar10" else (100 if label_mode == "fine" else 20)
    info = {"source": str(folder), "label_mode": label_mode, "normalize": normalize,
            "citation": "Krizhevsky, Learning Multiple Layers of Features from Tiny Images (2009)"}
    return Dataset(name, x_train, splits["train"][1], x_test, splits["test"][1], num_classes=num_classes, info=info)


#: ImageNet's per-channel mean and standard deviation of RGB in [0, 1] (the torchvision convention).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_IMAGENET_HELP = (
    "ImageNet (ILSVRC-2012) must be downloaded by hand (registration: https://image-net.org/download.php, or "
    "the Kaggle 'imagenet-object-localization-challenge') and arranged as ROOT/train/<wnid>/*.JPEG and "
    "ROOT/val/<wnid>/*.JPEG; the validation images come in one flat folder and are sorted into <wnid> "
    "folders by e.g. https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh")


class ImageFolder:
    """Images in the ImageNet folder layout ``root/<split>/<class>/<image>``, decoded on demand.

    Classes are the sorted sub-folder names of ``root/train`` (of ``root/<split>`` when there is no train
    folder), numbered from 0 as torchvision's ``ImageFolder`` does, so train and val share one labelling.
    Files are listed in sorted order. An image is decoded with PIL, converted to RGB, resized so that its
    shorter side is ``round(image_size / crop_fraction)`` (bilinear), and centre-cropped to ``image_size``
    square: the standard evaluation transform (256 then 224 at ``crop_fraction=0.875``). Arrays are NHWC
    float32, standardized with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD` when ``normalize``.
    """

    def __init__(self, root, split: str = "train", *, image_size: int = 64, crop_fraction: float = 0.875,
                 classes=None, max_per_class: int | None = None, normalize: bool = True):
        self.root = Path(root).expanduser()
        self.split = split
        self.image_size = _check_int("image_size", image_size, 1)
        if not 0.0 < float(crop_fraction) <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
        self.crop_fraction = float(crop_fraction)
        self.normalize = normalize
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}. {_IMAGENET_HELP}")
        label_root = self.root / "train" if (self.root / "train").is_dir() else folder
        all_classes = sorted(d.name for d in label_root.iterdir() if d.is_dir())
        if not all_classes:
            loose = [f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES]
            hint = " (it holds images directly: sort them into class folders)" if loose else ""
            raise FileNotFoundError(f"{label_root} has no class folders{hint}. {_IMAGENET_HELP}")
        if classes is None:
            classes = all_classes
        else:
            classes = list(classes)
            unknown = sorted(set(classes) - set(all_classes))
            if unknown:
                raise ValueError(f"classes {unknown[:5]} are not folders of {label_root}")
        self.classes = list(classes)
        self.class_to_index = {c: i for i, c in enumerate(self.classes)}
        if max_per_class is not None:
            max_per_class = _check_int("max_per_class", max_per_class, 1)
        files, labels = [], []
        for c in self.classes:
            d = folder / c
            found = sorted(f for f in d.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES) if d.is_dir() else []
            found = found[:max_per_class] if max_per_class is not None else found
            files += found
            labels += [self.class_to_index[c]] * len(found)
        if not files:
            raise FileNotFoundError(f"no images (.JPEG, .jpg, .png) in the class folders of {folder}. "
                                    f"{_IMAGENET_HELP}")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int32)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 ``(image_size, image_size, 3)`` after resize and centre crop."""
        from PIL import Image

        size = self.image_size
        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
            w, h = image.size
            short = max(size, int(round(size / self.crop_fraction)))
            scale = short / min(w, h)
            new_w, new_h = max(short, int(round(w * scale))), max(short, int(round(h * scale)))
            image = image.resize((new_w, new_h), Image.BILINEAR)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            image = image.crop((left, top, left + size, top + size))
            return np.asarray(image, dtype=np.uint8)

    def images(self, indices) -> np.ndarray:
        """Decoded float32 NHWC images of ``indices``, in [0, 1] or standardized."""
        x = np.stack([self.decode(int(i)) for i in indices]).astype(np.float32) / 255.0
        return (x - IMAGENET_MEAN) / IMAGENET_STD if self.normalize else x

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                drop_remainder: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of ``(images, labels)``, decoded batch by batch, in the order of :func:`batches`."""
        for (idx,) in batches(np.arange(len(self)), batch_size=batch_size, seed=seed, epoch=epoch,
                              shuffle=shuffle, drop_remainder=drop_remainder):
            yield self.images(idx), self.labels[idx]


def load_imagenet(root, *, image_size: int = 64, classes=None, max_per_class: int | None = None,
                  train_split: str = "train", test_split: str = "val", normalize: bool = True) -> Dataset:
    """ImageNet (or any data set in its folder layout) decoded into memory as a :class:`Dataset`.

    Meant for subsets (``classes``, ``max_per_class``) and small ``image_size``: the whole training set at
    64x64 is 15 GB as uint8. For the full set, iterate :class:`ImageFolder` ``.batches`` instead.
    """
    train = ImageFolder(root, train_split, image_size=image_size, classes=classes, max_per_class=max_per_class,
                        normalize=normalize)
    test = ImageFolder(root, test_split, image_size=image_size, classes=train.classes, max_per_class=max_per_class,
                       normalize=normalize)
    info = {"source": str(Path(root).expanduser()), "classes": train.classes, "image_size": image_size,
            "max_per_class": max_per_class,
            "citation": "Russakovsky et al., ImageNet Large Scale Visual Recognition Challenge, IJCV 2015"}
    return Dataset("imagenet", train.images(range(len(train))), train.labels, test.images(range(len(test))),
                   test.labels, num_classes=train.num_classes, info=info)


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------

_LOADERS = {"mnist1d": load_mnist1d, "digits": load_digits, "imagenet": load_imagenet,
            "cifar10": lambda **kw: load_cifar("cifar10", **kw), "cifar100": lambda **kw: load_cifar("cifar100", **kw)}


def load(name: str, **kwargs) -> Dataset:
    """Load the classification dataset ``name`` with its loader's keyword arguments.

    ``"mnist1d"`` (:func:`load_mnist1d`), ``"digits"`` (:func:`load_digits`), and the real loaders
    ``"cifar10"``, ``"cifar100"`` (:func:`load_cifar`, ``root=``) and ``"imagenet"`` (:func:`load_imagenet`,
    ``root=``), which read data the user downloaded and raise ``FileNotFoundError`` saying how to get it.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[name](**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------

def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches per epoch: ``floor(n / B)`` when the remainder is dropped, else ``ceil(n / B)``."""
    num_examples = _check_int("num_examples", num_examples, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def _check_arrays(arrays) -> int:
    if not arrays:
        raise TypeError("batches needs at least one array")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"arrays must have the same length along axis 0, got lengths {[len(a) for a in arrays]}")
    return lengths.pop()


def epoch_order(num_examples: int, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the ``num_examples`` examples: a permutation drawn from
    :func:`rng` ``(seed, epoch)``, or ``arange`` when ``shuffle`` is False."""
    num_examples = _check_int("num_examples", num_examples, 0)
    if not shuffle:
        return np.arange(num_examples)
    return rng(_check_int("seed", seed, 0), _check_int("epoch", epoch, 0)).permutation(num_examples)


def batches(*arrays: np.ndarray, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
            drop_remainder: bool = True) -> Iterator[tuple[np.ndarray, ...]]:
    """One epoch of minibatches of ``arrays`` (all indexed along axis 0 together), as NumPy arrays.

    The order is :func:`epoch_order` ``(n, seed, epoch)``, so it depends only on the seed and the epoch
    number. With ``drop_remainder`` (the default) every batch has exactly ``batch_size`` examples and the
    last ``n mod batch_size`` examples of the epoch's order are skipped (they are different examples each
    epoch); a ``batch_size`` larger than the dataset is then an error rather than an empty epoch.

    Yields a tuple with one array per input array (``xb, yb`` for ``batches(x, y, ...)``).
    """
    n = _check_arrays(arrays)
    batch_size = _check_int("batch_size", batch_size, 1)
    if drop_remainder and batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the {n} examples, so with drop_remainder=True "
                         "an epoch would have no batch; use a smaller batch_size or more data")
    order = epoch_order(n, seed, epoch, shuffle)
    for b in range(num_batches(n, batch_size, drop_remainder)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        yield tuple(np.asarray(a)[idx] for a in arrays)


def batch_stream(*arrays: np.ndarray, batch_size: int, seed: int = 0, start_step: int = 0,
                 shuffle: bool = True) -> Iterator[tuple[np.ndarray, ...]]:
    """An endless stream of full batches: epoch after epoch of :func:`batches` (remainder dropped).

    Step ``s`` is batch ``s mod k`` of epoch ``s // k`` with ``k = num_batches(n, batch_size)``, so starting
    at ``start_step`` yields exactly what an uninterrupted stream yields from its step ``start_step`` on:
    a resumed run sees the same data as one that never stopped.
    """
    n = _check_arrays(arrays)
    batch_size = _check_int("batch_size", batch_size, 1)
    start_step = _check_int("start_step", start_step, 0)
    per_epoch = num_batches(n, batch_size)
    if per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the {n} examples; an epoch would have no batch")
    epoch, b = divmod(start_step, per_epoch)
    while True:
        order = epoch_order(n, seed, epoch, shuffle)
        for b in range(b, per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield tuple(np.asarray(a)[idx] for a in arrays)
        epoch, b = epoch + 1, 0
