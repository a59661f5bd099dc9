"""lamb.experiments.bert_large_batch: BERT's layer types and exclusions, the injected two-phase schedule, the trial
bank (phases, re-warmup, vectorized trials equal single runs, accumulation), the dry run's caps, the frequency
floor, and the summaries (worked by hand)."""

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


def _schedule(**kw):
    return dict(dict(peak_1=0.02, warmup_1=2, steps_1=4, peak_2=0.01, warmup_2=1, steps_2=3), **kw)


def test_bank_carries_the_optimizer_through_phases_and_rewarms(tiny):
    short, long, model = tiny
    trials = [blb.Trial("lamb", 0, **_schedule()), blb.Trial("adamw", 0, **_schedule()),
              blb.Trial("lamb", 1, **_schedule(), label="third")]
    records = blb.bank(model, trials, [blb.Phase(short, 8, 4, 2), blb.Phase(long, 4, 3)], evaluations=1,
                       eval_batch_size=4, eval_sequences=6)
    assert [r["label"] for r in records] == ["lamb-seed0", "adamw-seed0", "third"]
    h = records[0]["history"]
    assert h["step"] == [1, 2, 3, 4, 5, 6, 7]
    assert h["examples"] == [8, 16, 24, 32, 36, 40, 44]
    # rates of updates 1..7 are the schedule at counts 0..6: warmup, decay, then from zero again
    np.testing.assert_allclose(h["learning_rate"], [0.0, 0.01, 0.02, 0.01, 0.0, 0.01, 0.005], atol=1e-7)
    assert [p["seq_len"] for p in records[0]["phases"]] == [12, 24]
    assert [p["micro_batch"] for p in records[0]["phases"]] == [4, 4]
    assert h["eval_step"] == [2, 4, 6, 7] and h["eval_phase"] == [0, 0, 1, 1]     # halfway and at the end
    assert all(len(v) == 7 for v in records[0]["trust_ratio"].values()) and records[0]["trust_ratio"]
    assert not any(blb.layer_type(n) == blb.EXCLUDED for n in records[0]["trust_ratio"])
    assert records[1]["trust_ratio"] == {}                                          # AdamW has none
    for r in records:
        assert np.isfinite(r["history"]["loss"]).all() and r["phases"][1]["median_step_s"] > 0
    # the same seed, another optimizer: the same data, so the same first loss, then apart
    assert records[0]["history"]["loss"][0] == pytest.approx(records[1]["history"]["loss"][0], rel=1e-6)
    assert records[0]["history"]["loss"][-1] != records[1]["history"]["loss"][-1]


def test_a_trial_trains_the_same_alone_or_in_a_bank_and_with_accumulation(tiny):
    short, _, model = tiny
    schedule = dict(peak_1=0.01, warmup_1=1, steps_1=3)
    alone = blb.bank(model, [blb.Trial("lamb", 1, **schedule)], [blb.Phase(short, 8, 3)], evaluations=0,
                     eval_batch_size=4, eval_sequences=4)[0]
    banked = blb.bank(model, [blb.Trial("adamw", 0, **schedule), blb.Trial("lamb", 1, **schedule)],
                      [blb.Phase(short, 8, 3, 4)], evaluations=0, eval_batch_size=4, eval_sequences=4)[1]
    # micro-batches of 2 summed: the same steps up to the order of the float32 sums
    np.testing.assert_allclose(banked["history"]["loss"], alone["history"]["loss"], rtol=2e-5)
    np.testing.assert_allclose(banked["history"]["test_loss"], alone["history"]["test_loss"], rtol=2e-5)
    for name in alone["trust_ratio"]:
        np.testing.assert_allclose(banked["trust_ratio"][name], alone["trust_ratio"][name], rtol=1e-4)


def test_ladder_scales_the_rate_keeps_warmup_steps_and_reuses_done_runs(tiny):
    short, _, model = tiny
    base = blb.grid(model, short, 4, {"adamw": [0.01, 0.02]}, total_examples=64, warmup_steps=2, evaluations=0,
                    eval_batch_size=4, eval_sequences=4)
    assert sorted(base["adamw"]) == [0.01, 0.02]
    done = {("adamw", 4, 0): base["adamw"][0.01]}
    runs = blb.ladder(model, short, [4, 16], {"adamw": 0.01}, total_examples=64, base_batch_size=4,
                      warmup_steps=2, seeds=(0,), base_seeds=(1,), micro_batch=4, done=done, evaluations=0,
                      eval_batch_size=4, eval_sequences=4)["adamw"]
    assert sorted(runs) == [(4, 0), (4, 1), (16, 0)]
    assert runs[(4, 0)] is done[("adamw", 4, 0)]
    assert runs[(4, 1)]["schedule"]["peak_1"] == 0.01 and runs[(4, 1)]["schedule"]["steps_1"] == 16.0
    assert runs[(16, 0)]["schedule"]["peak_1"] == pytest.approx(0.02)   # sqrt(16 / 4) = 2
    assert runs[(16, 0)]["schedule"]["steps_1"] == 4.0                  # a fixed budget of 64 examples
    assert runs[(16, 0)]["schedule"]["warmup_1"] == 2.0
    assert runs[(16, 0)]["phases"][0]["accumulation_steps"] == 4
    with pytest.raises(ValueError, match="not more than the 2 warmup steps"):
        blb.ladder(model, short, [32], {"lamb": 0.01}, total_examples=64, base_batch_size=4, warmup_steps=2)
    with pytest.raises(ValueError, match="not a multiple of micro_batch"):
        blb.ladder(model, short, [12], {"lamb": 0.01}, total_examples=64, base_batch_size=4, warmup_steps=2,
                   micro_batch=8)


def test_trial_validates_its_numbers():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        blb.Trial("sgd", 0, 0.1, 1, 3)
    with pytest.raises(ValueError, match="warmup_1"):
        blb.Trial("lamb", 0, 0.1, 3, 3)
    with pytest.raises(ValueError, match="seed must be"):
        blb.Trial("lamb", -1, 0.1, 1, 3)


def test_dry_run_caps_steps_and_micro_batches_at_full_shapes(tiny, monkeypatch):
    short, _, model = tiny
    monkeypatch.setenv(profiles.DRY_RUN_ENV, "1")
    trials = [blb.Trial("lamb", 0, 0.01, 2, 8), blb.Trial("adamw", 0, 0.01, 2, 8)]
    records = blb.bank(model, trials, [blb.Phase(short, 16, 8, 2)], evaluations=1, eval_batch_size=4,
                       eval_sequences=6)
    assert len(records) == 2                                            # every trial, so the notebook's tables run
    phase = records[0]["phases"][0]
    assert phase["steps"] == profiles.DRY_RUN_STEPS and phase["planned_steps"] == 8
    assert phase["micro_batch"] == blb.DRY_RUN_MICRO_BATCH and phase["accumulation_steps"] == 2
    assert phase["batch_size"] == 2 * blb.DRY_RUN_MICRO_BATCH and phase["planned_batch_size"] == 16
    assert phase["dry_run_cap"] == {"steps": 8, "accumulation_steps": 2, "micro_batch": 8, "eval_sequences": 6}
    assert records[0]["dry_run"] and records[0]["environment"]["dry_run"]


def test_bank_step_flops_costs_the_full_shapes_without_training(tiny, monkeypatch):
    short, long, model = tiny
    monkeypatch.setenv(profiles.DRY_RUN_ENV, "1")       # the dry run's caps do not apply: nothing runs
    trials = [blb.Trial("lamb", 0, 0.01, 2, 8), blb.Trial("adamw", 1, 0.01, 2, 8)]
    costs = blb.bank_step_flops(model, trials, [blb.Phase(short, 16, 8, 2), blb.Phase(long, 16, 3, 4)])
    assert [(c["seq_len"], c["micro_batch"], c["accumulation_steps"], c["steps"], c["runs"]) for c in costs] == [
        (12, 8, 2, 8, 2), (24, 4, 4, 3, 2)]
    for c in costs:
        assert c["micro_batch_flops"] > 0 and c["step_flops"] == c["accumulation_steps"] * c["micro_batch_flops"]
    small = blb.bank_step_flops(model, trials, [blb.Phase(short, 16, 8, 8)])[0]
    assert 1.5 < costs[0]["micro_batch_flops"] / small["micro_batch_flops"] < 4    # 8 sequences against 2


def test_frequency_baseline_by_hand(tiny):
    short, _, _ = tiny
    out = blb.frequency_baseline(short, eval_batch_size=4, eval_sequences=10)
    _, labels = blb.validation_batches(short, 4, 10)
    labels = labels[labels >= 0]
    train = short.train[short.train >= len(short.special_ids)]
    counts = np.bincount(train, minlength=short.vocab_size)
    top = int(np.argmax(counts))
    assert out["positions"] == labels.size and out["token"] == short.decode([top])
    assert out["accuracy"] == pytest.approx(np.mean(labels == top))
    p = (counts + 1) / (counts.sum() + short.vocab_size)
    assert out["loss"] == pytest.approx(-np.mean(np.log(p[labels])))
    # no model of the frequencies alone does better on these positions than the frequencies themselves
    assert out["loss"] < math.log(short.vocab_size)


def test_base_target_is_the_worst_base_seed():
    assert blb.base_target([_record("lamb", 3.0, 0.50), _record("lamb", 3.2, 0.40)]) == 0.40
    with pytest.raises(ValueError, match="at least one"):
        blb.base_target([])


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
    # a floor above a batch's mean: it does not reach, however low the target
    assert [r["reaches"] for r in blb.table1(runs, 0.0, floor=0.45)] == [False, True, False]


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
