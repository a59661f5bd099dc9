import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamb.experiments import large_batch_resnet as lbr
from lamb.experiments import models


def test_analog_batch_is_the_imagenet_fraction():
    assert lbr.analog_batch(16384, 1_281_167) == 16384
    assert lbr.analog_batch(16384, 4000) == 51
    assert lbr.analog_batch(512, 1000) == 1
    with pytest.raises(ValueError, match="train_size"):
        lbr.analog_batch(512, 0)


def test_layer_groups_of_the_resnet():
    m = models.resnet((40,), 10, widths=(8, 16), blocks_per_stage=2, groups=4)
    names = models.layer_names(m.init(jax.random.key(0)))
    groups = {n: lbr.layer_group(n, 2) for n in names}
    assert groups["stem/conv/kernel"] == "stem conv"
    assert groups["head/kernel"] == "final dense"
    assert groups["head/bias"] == groups["stem/norm/scale"] == "excluded"
    assert groups["block_1/conv_2/kernel"] == "stage 0 convs"
    assert groups["block_2/conv_1/kernel"] == "stage 1 convs"
    assert groups["block_2/projection/kernel"] == "shortcut projections"
    with pytest.raises(ValueError, match="not a parameter name"):
        lbr.layer_group("encoder_0/attention/query/kernel")


def test_trial_bank_row_trains_as_its_own_optimizer():
    m = models.resnet((40,), 10, widths=(8, 16), groups=4)
    params = m.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, 40))
    y = jnp.arange(16) % 10
    grad = jax.grad(lambda p: models.loss_sums(m.apply(p, x), y)["loss"] / 16)
    rows = [("Adam", 1e-3, 0.0), ("LAMB", 0.02, 0.01), ("momentum", 0.05, 1e-4), ("LARS", 0.01, 0.0)]
    bank = lbr.trial_bank(rows)
    for i, (name, lr, wd) in enumerate(rows, 1):
        ref_tx, bank_tx = lbr.build_optimizer(name, lr, wd), bank(lambda c, i=i: jnp.float32(i))
        p_ref = p_bank = params
        s_ref, s_bank = ref_tx.init(params), bank_tx.init(params)
        for _ in range(3):
            u, s_ref = ref_tx.update(grad(p_ref), s_ref, p_ref)
            p_ref = optax.apply_updates(p_ref, u)
            u, s_bank = bank_tx.update(grad(p_bank), s_bank, p_bank)
            p_bank = optax.apply_updates(p_bank, u)
        for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_bank)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)
    with pytest.raises(ValueError, match="unknown optimizer"):
        lbr.trial_bank([("SGD", 0.1, 0.0)])


def test_goyal_shape_decays_at_30_60_80_of_90():
    s = lbr.goyal_shape(900)
    assert float(s(0)) == 0.0 and float(s(50)) == 1.0
    np.testing.assert_allclose([float(s(t)) for t in (299, 300, 600, 800)], [1.0, 0.1, 0.01, 0.001], rtol=1e-5)


def test_trial_bank_in_the_vectorized_runner():
    from lamb.experiments import data, vectorized

    ds = data.load_digits()
    m = models.resnet((8, 8, 1), 10, widths=(4,), groups=4)
    task = vectorized.image_task(m, data.Dataset("digits", ds.x_train.reshape(-1, 8, 8, 1), ds.y_train,
                                                  ds.x_test.reshape(-1, 8, 8, 1), ds.y_test, 10))
    rows = [("Adam", 1e-3, 0.0), ("LAMB", 0.02, 0.01)]
    r = vectorized.run_trials(task, lbr.trial_bank(rows, lbr.goyal_shape(4)), [(1.0, 0), (2.0, 0)], batch_size=32,
                              steps=4, eval_every=2, schedule="constant", stop=None)
    losses = [h["train_loss"] for h in r.histories]
    assert all(np.all(np.isfinite(v)) for v in losses)
    assert not np.allclose(losses[0], losses[1])  # the rows train with different optimizers


def _fake_bank():
    rows = [["Adam", 0.001, 0.0], ["Adam", 0.01, 0.0], ["LAMB", 0.01, 0.01]]
    trials = [[r, s] for r in range(3) for s in (0, 1)]
    final = {0: [0.5, 0.6], 1: [0.7, float("nan")], 2: [0.8, 0.82]}  # row 1's seed 1 diverged
    hist = [{"val_loss": [1.0, 0.5 if np.isfinite(final[r][s]) else float("nan")],
             "val_accuracy": [0.1, final[r][s]], "train_loss": [1.0, 0.5]} for r, s in trials]
    return {"rows": rows, "trials": trials, "histories": hist, "epoch": [0.5, 1.0], "batch_size": 8,
            "test_accuracy": [final[r][s] for r, s in trials]}


def test_tuned_counts_a_diverged_seed_as_zero():
    best = lbr.tuned(_fake_bank())
    # row 1 has the best surviving seed (0.7) but a diverged one: mean 0.35 < row 0's 0.55
    assert best["Adam"]["learning_rate"] == 0.001 and best["Adam"]["diverged"] == 0
    assert best["LAMB"]["val_accuracy"] == [0.8, 0.82]
    table = lbr.trial_table(_fake_bank())
    assert sum(t["diverged"] for t in table) == 1 and np.isnan(table[3]["val_accuracy"])


def test_seed_noise_test():
    t = lbr.seed_noise_test([0.80, 0.81, 0.79], [0.50, 0.51, 0.49])
    assert t["difference"] == pytest.approx(0.30) and t["p"] < 0.01
    assert np.isnan(lbr.seed_noise_test([0.8], [0.5])["p"])  # one seed: no test
    assert lbr.seed_noise_test([0.8, 0.7], [0.8, 0.7])["p"] == pytest.approx(1.0)


def test_validation_split_keeps_the_test_split():
    from lamb.experiments import data

    ds = data.load_digits()
    tuning, (x_test, y_test) = lbr.validation_split(ds, 100)
    assert len(tuning.y_test) == 100 and len(tuning.y_train) == len(ds.y_train) - 100
    assert x_test is ds.x_test and y_test is ds.y_test
    with pytest.raises(ValueError, match="validation_examples"):
        lbr.validation_split(ds, len(ds.y_train))
