"""lamb.experiments.data: offline datasets, the cache, deterministic batches, real loaders on local fixtures."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lamb.experiments import data


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache directory, so tests neither read nor fill the user's cache."""
    monkeypatch.setenv("LAMB_DATA_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------------------------------------
# MNIST-1D
# ----------------------------------------------------------------------------------------------------------------

def test_mnist1d_matches_the_package_generator():
    """Our arrays are the package's make_dataset output (independent call), cast to float32/int32."""
    from mnist1d.data import get_dataset_args, make_dataset

    ds = data.load("mnist1d", seed=3, num_samples=300)
    args = get_dataset_args()
    args.num_samples, args.seed = 300, 3
    ref = make_dataset(args)
    np.testing.assert_array_equal(ds.x_train, ref["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, ref["y"])
    np.testing.assert_array_equal(ds.x_test, ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, ref["y_test"])
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.input_shape == (40,) and ds.num_classes == 10
    assert (ds.num_train, ds.num_test) == (240, 60)
    # every digit is generated num_samples // 10 times
    assert np.array_equal(np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10), np.full(10, 30))


def test_mnist1d_deterministic_seed_dependent_and_cached(tmp_path):
    a = data.load("mnist1d", seed=0, num_samples=200)
    cached = list((tmp_path / "cache").glob("mnist1d-*.npz"))
    assert len(cached) == 1
    b = data.load("mnist1d", seed=0, num_samples=200)  # read from the cache
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = data.load("mnist1d", seed=0, num_samples=200, cache=False)  # regenerated
    np.testing.assert_array_equal(a.x_train, c.x_train)
    d = data.load("mnist1d", seed=1, num_samples=200)
    assert not np.array_equal(a.x_train, d.x_train)
    assert len(list((tmp_path / "cache").glob("mnist1d-*.npz"))) == 2  # keyed by the seed


def test_mnist1d_cache_is_keyed_by_generator_args(tmp_path):
    a = data.load("mnist1d", seed=0, num_samples=200)
    b = data.load("mnist1d", seed=0, num_samples=200, shuffle_seq=True)
    assert not np.array_equal(a.x_train, b.x_train)
    assert len(list((tmp_path / "cache").glob("mnist1d-*.npz"))) == 2


def test_mnist1d_damaged_cache_is_regenerated(tmp_path):
    a = data.load("mnist1d", seed=0, num_samples=200)
    (path,) = (tmp_path / "cache").glob("mnist1d-*.npz")
    path.write_bytes(b"not an npz file")
    b = data.load("mnist1d", seed=0, num_samples=200)
    np.testing.assert_array_equal(a.x_train, b.x_train)


def test_mnist1d_leaves_global_random_state_alone():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    data.load("mnist1d", seed=0, num_samples=100, cache=False)
    assert np.random.rand() == expected_np and random.random() == expected_py


def test_mnist1d_profile_sizes(monkeypatch):
    assert data.mnist1d_num_samples("smoke") == 5000
    # the cpu profile supports batch 8192 with several steps per epoch
    assert 0.8 * data.mnist1d_num_samples("cpu") // 8192 >= 5
    assert 0.8 * data.mnist1d_num_samples("gpu") // 8192 >= 30
    monkeypatch.setenv("LAMB_PROFILE", "smoke")
    assert data.mnist1d_num_samples() == 5000
    with pytest.raises(ValueError, match="profile"):
        data.mnist1d_num_samples("laptop")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_samples": 105}, ValueError, "multiple of 10"),
    ({"num_samples": 0}, ValueError, "num_samples"),
    ({"num_samples": 100.0}, TypeError, "num_samples"),
    ({"seed": -1}, ValueError, "seed"),
    ({"train_split": 1.0}, ValueError, "train_split"),
    ({"colour": "red"}, TypeError, "colour"),
])
def test_mnist1d_bad_arguments(kwargs, error, match):
    kwargs = {"num_samples": 100, **kwargs}
    with pytest.raises(error, match=match):
        data.load("mnist1d", **kwargs)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="mnist1d"):
        data.load("mnist2d")


# ----------------------------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------------------------

def test_digits_split_and_standardization():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = data.load("digits")
    assert ds.input_shape == (64,) and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_train + ds.num_test == len(raw.target) == 1797
    # stratified: each class has round(0.2 * n_c) test examples
    counts = np.bincount(raw.target, minlength=10)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.round(0.2 * counts))
    # standardized with training statistics: zero mean, unit std where the pixel varies, zero where constant
    std = ds.x_train.std(axis=0)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    varying = std > 1e-6
    np.testing.assert_allclose(std[varying], 1, rtol=1e-4)
    assert varying.sum() >= 60  # only a few always-blank corner pixels
    # the same examples as sklearn's: the labels of the two splits together are sklearn's labels
    np.testing.assert_array_equal(np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10), counts)
    np.testing.assert_array_equal(data.load("digits").x_test, ds.x_test)  # deterministic
    assert not np.array_equal(data.load("digits", seed=1).y_test, ds.y_test)


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------

def test_batches_shapes_cover_and_pair():
    x = np.arange(1000, dtype=np.float32).reshape(100, 10)
    y = np.arange(100, dtype=np.int32)
    out = list(data.batches(x, y, batch_size=32, seed=0, epoch=0))
    assert len(out) == 3 == data.num_batches(100, 32)
    seen = []
    for xb, yb in out:
        assert xb.shape == (32, 10) and yb.shape == (32,)
        np.testing.assert_array_equal(xb[:, 0], yb * 10)  # rows stay paired with their labels
        seen.extend(yb.tolist())
    assert len(set(seen)) == 96  # no repeats within an epoch
    out = list(data.batches(x, y, batch_size=32, drop_remainder=False))
    assert [len(b[1]) for b in out] == [32, 32, 32, 4] and data.num_batches(100, 32, False) == 4
    assert sorted(np.concatenate([b[1] for b in out]).tolist()) == list(range(100))
    out = list(data.batches(x, y, batch_size=32, shuffle=False))
    np.testing.assert_array_equal(out[0][1], np.arange(32))


def test_batches_are_deterministic_by_seed_and_epoch():
    y = np.arange(1000)

    def order(seed, epoch):
        return np.concatenate([b for (b,) in data.batches(y, batch_size=100, seed=seed, epoch=epoch)])

    np.testing.assert_array_equal(order(0, 0), order(0, 0))
    # the documented recipe, computed independently: PCG64 seeded with SeedSequence([seed, epoch])
    expected = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 3]))).permutation(1000)
    np.testing.assert_array_equal(order(7, 3), expected)
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 1), order(1, 0))  # no seed+epoch collision


def test_same_batches_in_a_fresh_process_with_another_hash_seed(tmp_path):
    """Nothing depends on Python's per-process hash randomization (set/dict order of strings): two fresh
    interpreters with different PYTHONHASHSEED produce the same data and batches."""
    import os
    import subprocess
    import sys

    script = (
        "from lamb.experiments import data; import hashlib\n"
        "ds = data.load('mnist1d', seed=0, num_samples=100, cache=False)\n"
        "h = hashlib.sha256()\n"
        "for xb, yb in data.batches(ds.x_train, ds.y_train, batch_size=16, seed=1, epoch=2):\n"
        "    h.update(xb.tobytes()); h.update(yb.tobytes())\n"
        "print(h.hexdigest())\n")
    procs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, LAMB_DATA_DIR=str(tmp_path / hash_seed))
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outputs.append(out.strip())
    assert outputs[0] == outputs[1] and len(outputs[0]) == 64


def test_batch_stream_resumes_exactly():
    x = np.arange(50)
    full = [b for (b,), _ in zip(data.batch_stream(x, batch_size=8, seed=5), range(20))]
    # epoch boundaries: 6 batches per epoch; step 6 starts epoch 1 with its own order
    np.testing.assert_array_equal(np.concatenate(full[:6]),
                                  data.epoch_order(50, seed=5, epoch=0)[:48])
    np.testing.assert_array_equal(full[6], data.epoch_order(50, seed=5, epoch=1)[:8])
    for start in (0, 5, 6, 13):
        resumed = [b for (b,), _ in zip(data.batch_stream(x, batch_size=8, seed=5, start_step=start),
                                        range(20 - start))]
        for a, b in zip(full[start:], resumed):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.0}, TypeError, "batch_size"),
    ({"batch_size": 11}, ValueError, "batch_size=11"),
    ({"batch_size": 2, "seed": -1}, ValueError, "seed"),
    ({"batch_size": 2, "epoch": -1}, ValueError, "epoch"),
])
def test_batches_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        list(data.batches(np.zeros(10), np.zeros(10), **kwargs))


def test_batches_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        list(data.batches(np.zeros(10), np.zeros(9), batch_size=2))


# ----------------------------------------------------------------------------------------------------------------
# Real loaders on fixtures in the real on-disk formats
# ----------------------------------------------------------------------------------------------------------------

def _cifar_row(image):
    """The documented CIFAR row layout: 1024 red, then 1024 green, then 1024 blue values, each plane
    row-major (https://www.cs.toronto.edu/~kriz/cifar.html)."""
    return np.concatenate([image[:, :, c].ravel() for c in range(3)])


def _write_cifar(folder, files, n, label_keys, seed):
    import pickle

    g = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name in files:
        images = g.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"data": np.stack([_cifar_row(im) for im in images]),
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        labels = {}
        for key, classes in label_keys.items():
            labels[key] = g.integers(0, classes, size=n).tolist()
            batch[key.encode()] = labels[key]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)  # the official files are Python 2 pickles
        written[name] = (images, labels)
    return written


def test_cifar10_loader_reads_the_official_format(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = _write_cifar(tmp_path / "cifar-10-batches-py", files, 4, {"labels": 10}, seed=0)
    ds = data.load("cifar10", root=tmp_path, normalize=False)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3) and ds.num_classes == 10
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_allclose(ds.x_train, expected / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, written["test_batch"][1]["labels"])
    assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32
    # normalized: per-channel standardization with the training statistics
    norm = data.load("cifar10", root=tmp_path / "cifar-10-batches-py")  # the folder itself works too
    np.testing.assert_allclose(norm.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(norm.x_train.std(axis=(0, 1, 2)), 1, rtol=1e-4)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    written = _write_cifar(tmp_path / "cifar-100-python", ["train", "test"], 6,
                           {"fine_labels": 100, "coarse_labels": 20}, seed=1)
    fine = data.load("cifar100", root=tmp_path, normalize=False)
    coarse = data.load("cifar100", root=tmp_path, label_mode="coarse")
    assert (fine.num_classes, coarse.num_classes) == (100, 20)
    np.testing.assert_array_equal(fine.y_train, written["train"][1]["fine_labels"])
    np.testing.assert_array_equal(coarse.y_test, written["test"][1]["coarse_labels"])
    np.testing.assert_allclose(fine.x_test, written["test"][0] / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="label_mode"):
        data.load("cifar100", root=tmp_path, label_mode="medium")


def test_cifar_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"https://www\.cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz"):
        data.load("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        data.load("cifar100", root=tmp_path / "nowhere")


def _write_imagenet(root, classes, per_class, fmt="JPEG"):
    from PIL import Image

    g = np.random.default_rng(0)
    colours = {wnid: tuple(int(v) for v in g.integers(30, 225, size=3)) for wnid in classes}
    for split, n in (("train", per_class), ("val", 2)):
        for wnid in classes:
            colour = colours[wnid]
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                size = (int(g.integers(20, 60)), int(g.integers(20, 60)))  # varied aspect ratios
                Image.new("RGB", size, colour).save(folder / f"{wnid}_{i}.{fmt}", quality=95)
    return colours


def test_imagenet_folder_layout(tmp_path):
    classes = ["n01440764", "n01443537", "n02102040"]
    colours = _write_imagenet(tmp_path, classes, per_class=3)
    ds = data.load("imagenet", root=tmp_path, image_size=16, normalize=False)
    assert ds.x_train.shape == (9, 16, 16, 3) and ds.x_test.shape == (6, 16, 16, 3) and ds.num_classes == 3
    assert ds.info["classes"] == sorted(classes)
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    # each image is its class's solid colour (JPEG is lossy: a few levels of error)
    for x, y in zip(ds.x_train, ds.y_train):
        np.testing.assert_allclose(x, np.broadcast_to(np.array(colours[classes[y]]) / 255.0, x.shape), atol=6 / 255)
    # normalized with ImageNet's mean and std
    norm = data.load_imagenet(tmp_path, image_size=16)
    np.testing.assert_allclose(norm.x_train, (ds.x_train - data.IMAGENET_MEAN) / data.IMAGENET_STD, rtol=1e-5)
    # subsets
    sub = data.load_imagenet(tmp_path, image_size=8, classes=["n02102040"], max_per_class=2)
    assert sub.num_train == 2 and sub.num_classes == 1 and (sub.y_train == 0).all()


def test_imagenet_resize_then_centre_crop(tmp_path):
    """A 60x20 PNG with red, green and blue thirds: the shorter side goes to round(16 / 0.875) = 18 (54x18),
    and the centre 16x16 crop (columns 19..34 of 54) lies inside the green third (18..35). Squashing the
    whole image to 16x16 would show red and blue."""
    from PIL import Image

    image = np.zeros((20, 60, 3), dtype=np.uint8)
    image[:, :20, 0] = image[:, 20:40, 1] = image[:, 40:, 2] = 255
    for split in ("train", "val"):
        (tmp_path / split / "n0").mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / split / "n0" / "a.png")
    folder = data.ImageFolder(tmp_path, "train", image_size=16)
    crop = folder.decode(0)
    assert crop.shape == (16, 16, 3)
    assert (crop[:, :, 1] == 255).all() and (crop[:, :, [0, 2]] == 0).all()


def test_imagenet_folder_batches_deterministic(tmp_path):
    _write_imagenet(tmp_path, ["a", "b"], per_class=5)
    folder = data.ImageFolder(tmp_path, "train", image_size=8)
    first = [y for _, y in folder.batches(batch_size=4, seed=3)]
    assert len(first) == 2 and all(len(y) == 4 for y in first)
    again = [y for _, y in folder.batches(batch_size=4, seed=3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    order = data.epoch_order(10, seed=3, epoch=0)
    np.testing.assert_array_equal(np.concatenate(first), folder.labels[order[:8]])


def test_imagenet_missing_or_flat_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="image-net.org"):
        data.load("imagenet", root=tmp_path / "imagenet")
    from PIL import Image

    (tmp_path / "flat" / "val").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(FileNotFoundError, match="sort them into class folders"):
        data.ImageFolder(tmp_path / "flat", "val")
    _write_imagenet(tmp_path / "ok", ["a"], per_class=1)
    with pytest.raises(ValueError, match="not folders"):
        data.ImageFolder(tmp_path / "ok", "train", classes=["zebra"])


def test_rng_arguments():
    with pytest.raises(TypeError, match="at least one seed"):
        data.rng()
    with pytest.raises(ValueError, match="seed"):
        data.rng(1.5)
    assert data.rng(np.int64(3), 1).random() == data.rng(3, 1).random()


def test_datasets_are_learnable_as_published():
    """Labels stay paired with inputs through generation, splitting and standardization: a linear classifier
    (scikit-learn's, independent of this package) gets the published accuracies -- about 32% on the standard
    MNIST-1D (4 000 train / 1 000 test, seed 42; the mnist1d README's logistic-regression figure; chance is
    10%) and well over 90% on the digits."""
    from sklearn.linear_model import LogisticRegression

    ds = data.load("mnist1d", seed=42, num_samples=5000)
    accuracy = LogisticRegression(max_iter=500).fit(ds.x_train, ds.y_train).score(ds.x_test, ds.y_test)
    assert 0.25 < accuracy < 0.40
    ds = data.load("digits")
    assert LogisticRegression(max_iter=500).fit(ds.x_train, ds.y_train).score(ds.x_test, ds.y_test) > 0.9


def test_the_generated_data_cache_is_keyed_by_the_generators_source(tmp_path, monkeypatch):
    """An edit to the module that makes MNIST-1D (our wrapper of its generator) never reads the old code's data."""
    import shutil
    from pathlib import Path

    import lamb
    from lamb import fingerprint

    source = tmp_path / "lamb_source"
    shutil.copytree(Path(lamb.__file__).parent, source, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE_ROOT", source)
    before = data.load_mnist1d(seed=0, num_samples=100).info["cache_file"]
    assert data.load_mnist1d(seed=0, num_samples=100).info["cache_file"] == before
    module = source / "experiments" / "data.py"
    module.write_text(module.read_text() + "\n# an edit to the generator's module\n")
    after = data.load_mnist1d(seed=0, num_samples=100).info["cache_file"]
    assert after != before and Path(after).exists()
