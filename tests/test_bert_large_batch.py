"""lamb.experiments.bert_large_batch: BERT's layer types and exclusions, the injected two-phase schedule, runs in
phases through train.fit, the dry run, and the summaries (worked by hand)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamb import jax as lj
from lamb import profiles
from lamb.experiments import bert_large_batch as blb
from lamb.experiments import models, schedules, text

WORDS = ("the optimizer scales each layer by the ratio of the weight norm to the update norm so that large "
         "batches train with the same learning rate in every layer of the network").split()


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=60)) for _ in range(120)]
    short = text.mlm_from_texts(docs[:100], docs[100:], seq_len=12, vocab_size=80, cache=False)
    long = text.mlm_from_texts(docs[:100], docs[100:], seq_len=24, vocab_size=80, tokenizer=short.tokenizer,
                               cache=False)
    model = models.bert(short.vocab_size, 24, hidden=16, layers=1, heads=2)
    return short, long, model


def test_layer_types_cover_bert_and_exclude_exactly_the_vectors():
    params = models.bert(100, 16, hidden=8, layers=2, heads=2).init(jax.random.key(0))
    names = models.layer_names(params)
    leaves = jax.tree.leaves(params)
    mask = jax.tree.leaves(blb.adaptation_mask(params))
    types = {n: blb.layer_type(n) for n in names}
    for n, leaf, m in zip(names, leaves, mask):
        assert (types[n] == blb.EXCLUDED) == (leaf.ndim == 1) == (not m), n
    assert set(types.values()) == set(blb.LAYER_TYPES) | {blb.EXCLUDED}
    assert types["encoder_1/attention/value/kernel"] == "attention value"
    assert types["encoder_0/mlp/dense_out/kernel"] == "FFN"
    assert types["mlm_head/transform/kernel"] == "MLM head"
    assert types["embeddings/position/embedding"] == "embeddings"
    assert types["encoder_0/attention_norm/scale"] == blb.EXCLUDED
    with pytest.raises(ValueError, match="no BERT layer type"):
        blb.layer_type("decoder/kernel2/conv")


def test_injected_optimizer_equals_plain_lamb_with_the_schedule():
    # The schedule's numbers live in the state (inject_hyperparams); the updates must be LAMB's with the same
    # two-phase schedule, re-warmup included.
    params = {"w": jnp.arange(12.0).reshape(3, 4) / 10, "b": jnp.ones(4)}
    numbers = dict(peak_1=0.1, warmup_1=2, steps_1=4, peak_2=0.05, warmup_2=1, steps_2=3)
    ours = blb.optimizer("lamb", **numbers, weight_decay=0.01)
    plain = lj.lamb(schedules.two_phase_warmup_polynomial_decay(**numbers), weight_decay=0.01,
                    mask=blb.adaptation_mask, layer_adaptation_mask=blb.adaptation_mask)
    s1, s2, p1, p2 = ours.init(params), plain.init(params), params, params
    for t in range(7):
        g = jax.tree.map(lambda x: jnp.sin(x * (t + 1)), p1)
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = plain.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        blb.optimizer("sgd", peak_1=0.1, warmup_1=0, steps_1=3)
    with pytest.raises(ValueError, match="warmup_1"):
        blb.optimizer("adamw", peak_1=0.1, warmup_1=3, steps_1=3)


def test_train_phases_carries_the_optimizer_and_rewarms(tiny):
    short, long, model = tiny
    schedule = dict(peak_1=0.02, warmup_1=2, steps_1=4, peak_2=0.01, warmup_2=1, steps_2=3)
    r = blb.train_phases(model, "lamb", [blb.Phase(short, 8, 4), blb.Phase(long, 4, 3)], schedule, evaluations=1,
                         eval_batch_size=4, eval_batches=1)
    h = r["history"]
    assert h["step"] == [1, 2, 3, 4, 5, 6, 7]
    assert h["examples"] == [8, 16, 24, 32, 36, 40, 44]
    # rates of updates 1..7 are the schedule at counts 0..6: warmup, decay, then from zero again
    np.testing.assert_allclose(h["learning_rate"], [0.0, 0.01, 0.02, 0.01, 0.0, 0.01, 0.005], atol=1e-7)
    assert [p["seq_len"] for p in r["phases"]] == [12, 24]
    assert all(len(v) == 7 for v in r["trust_ratio"].values())
    assert set(h["eval_phase"]) == {0, 1} and h["eval_step"][0] == 0 and h["eval_step"][-1] == 7
    assert np.isfinite(h["loss"]).all() and r["phases"][1]["median_step_s"] > 0


def test_ladder_scales_the_rate_and_keeps_warmup_steps(tiny):
    short, _, model = tiny
    runs = blb.ladder(model, "adamw", short, [4, 16], total_examples=64, peak_lr=0.01, base_batch_size=4,
                      warmup_steps=2, evaluations=1, eval_batch_size=4, eval_batches=1)
    assert sorted(runs) == [(4, 0), (16, 0)]
    assert runs[(4, 0)]["schedule"] == {"peak_1": 0.01, "warmup_1": 2.0, "steps_1": 16.0}
    assert runs[(16, 0)]["schedule"]["peak_1"] == pytest.approx(0.02)   # sqrt(16 / 4) = 2
    assert runs[(16, 0)]["schedule"]["steps_1"] == 4.0                  # a fixed budget of 64 examples
    with pytest.raises(ValueError, match="not more than the 2 warmup steps"):
        blb.ladder(model, "lamb", short, [32], total_examples=64, peak_lr=0.01, base_batch_size=4, warmup_steps=2)


def test_dry_run_trains_one_trial_of_two_steps(tiny, monkeypatch):
    short, _, model = tiny
    monkeypatch.setenv(profiles.DRY_RUN_ENV, "1")
    runs = blb.ladder(model, "lamb", short, [4, 8], total_examples=64, peak_lr=0.01, base_batch_size=4,
                      warmup_steps=2, seeds=(0, 1), evaluations=1, eval_batch_size=4, eval_batches=1)
    assert list(runs) == [(4, 0)]
    assert runs[(4, 0)]["phases"][0]["steps"] == profiles.DRY_RUN_STEPS
    assert runs[(4, 0)]["phases"][0]["planned_steps"] == 16 and runs[(4, 0)]["dry_run"]
    assert list(blb.grid(model, "adamw", short, 4, [0.01, 0.02], total_examples=64, warmup_steps=2, evaluations=1,
                         eval_batch_size=4, eval_batches=1)) == [0.01]


def _record(optimizer, loss, acc, batch=8, steps=10, step_s=0.1):
    return {"optimizer": optimizer, "history": {"test_loss": [9.0, loss], "test_accuracy": [0.0, acc]},
            "phases": [{"steps": steps, "median_step_s": step_s, "train_time_s": steps * step_s,
                        "batch_size": batch}]}


def test_table1_and_largest_reaching_by_hand():
    runs = {(8, 0): _record("lamb", 3.0, 0.50), (8, 1): _record("lamb", 3.2, 0.40),
            (16, 0): _record("lamb", 3.1, 0.45, 16, 5), (16, 1): _record("lamb", 3.1, 0.46, 16, 5),
            (32, 0): _record("lamb", 3.5, 0.30, 32, 2), (32, 1): _record("lamb", 3.6, 0.31, 32, 2)}
    rows = blb.table1(runs, 0.44)
    assert [r["batch_size"] for r in rows] == [8, 16, 32]
    assert rows[0]["acc_mean"] == pytest.approx(0.45) and rows[0]["acc_min"] == 0.40 and rows[0]["acc_max"] == 0.50
    assert rows[0]["acc_std"] == pytest.approx(math.sqrt(0.005))       # sample std of (0.5, 0.4)
    assert rows[1]["loss_mean"] == pytest.approx(3.1) and rows[1]["steps"] == 5
    assert [r["reaches"] for r in rows] == [True, True, False]
    assert blb.largest_reaching(rows) == 16
    assert blb.largest_reaching(blb.table1(runs, 0.6)) is None


def test_ranking_disagreements_by_hand():
    runs = {"a": _record("lamb", 3.0, 0.50), "b": _record("lamb", 2.9, 0.45), "c": _record("adamw", 3.5, 0.30)}
    # b has the lower loss but the lower accuracy than a; c is worse on both against either
    assert blb.ranking_disagreements(runs) == [("b", "a")]


def test_scaling_model_by_hand():
    rows = [{"batch_size": 8, "steps": 64, "reaches": True}, {"batch_size": 32, "steps": 16, "reaches": True},
            {"batch_size": 64, "steps": 8, "reaches": False}]
    out = blb.scaling_model(rows, base_batch_size=8, compute_s_per_example=1e-3, gradient_bytes=4e6,
                            latency_s=1e-5, bandwidth_bytes_per_s=1e9)
    # 4 workers: 8 ms compute + 2*3*1e-5 + 2*(3/4)*4e6/1e9 = 0.008 + 0.00006 + 0.006 = 0.01406 s per step
    assert out[1]["workers"] == 4 and out[1]["step_s"] == pytest.approx(0.01406)
    t0 = 64 * 8e-3
    assert out[1]["speedup"] == pytest.approx(t0 / (16 * 0.01406))
    assert out[1]["efficiency"] == pytest.approx(t0 / (16 * 0.01406) / 4)
    assert out[0]["efficiency"] == pytest.approx(1.0)
    assert out[2]["time_s"] == math.inf and out[2]["efficiency"] == 0.0


def test_mixed_precision_keeps_float32_parameters_and_gradients(tiny):
    short, _, model = tiny
    mp = blb.mixed_precision(model)
    params = mp.init(jax.random.key(0))
    batch = next(short.batches(4))
    logits, labels = jax.jit(mp.apply_masked)(params, batch["input_ids"], batch["labels"])
    assert logits.dtype == jnp.float32 and mp.config["compute_dtype"] == "bfloat16"
    grads = jax.jit(jax.grad(lambda p: models.loss_sums(*mp.apply_masked(p, batch["input_ids"],
                                                                          batch["labels"]))["loss"]))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    ref, _ = jax.jit(model.apply_masked)(params, batch["input_ids"], batch["labels"])
    np.testing.assert_allclose(logits, ref, atol=0.1)   # bf16 keeps about 3 significant digits


def test_markdown_table():
    md = blb.markdown_table([{"a": 1, "b": 2.5}], {"A": "a", "twice b": lambda r: 2 * r["b"]})
    assert md == "| A | twice b |\n|---|---|\n| 1 | 5.0 |\n"
