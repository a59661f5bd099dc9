"""lamb.jax on sharded arrays: 8 simulated CPU devices, whole-layer trust ratios, sharded == unsharded.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts, and JAX is already
running in the pytest process, so the checks run in a fresh Python process: this file executed as a script
(``python tests/test_jax_sharding.py``), which the test below starts with the flag set.
"""

from __future__ import annotations

from _jax_devices import run_on_cpu_devices

DEVICES = 8


def test_sharded_and_data_parallel_runs_equal_the_unsharded_run():
    stdout = run_on_cpu_devices(__file__, DEVICES)
    assert "all sharding checks passed" in stdout, stdout


# --------------------------------------------------------------------------------------------------
# The checks, run in the subprocess.


def _main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lamb import jax as lj
    from lamb import reference

    assert len(jax.devices()) == DEVICES, f"expected {DEVICES} CPU devices, got {jax.devices()}"
    mesh = jax.make_mesh((DEVICES,), ("x",))
    rng = np.random.default_rng(0)
    shapes = {"kernel": (16, 8), "embed": (32, 4), "bias": (8,), "scale": (24,), "zero": (16,)}
    specs = {"kernel": P(None, "x"),          # columns over the 8 devices: one column per device
             "embed": P("x", None),           # rows
             "bias": P("x"),
             "scale": P(),                    # replicated
             "zero": P("x")}
    params0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    params0["zero"][:] = 0.0
    grads = [{k: (10.0 ** rng.uniform(-2, 0) * rng.standard_normal(s)).astype(np.float32)
              for k, s in shapes.items()} for _ in range(6)]
    not_bias = {k: len(s) >= 2 for k, s in shapes.items()}

    def run(tx, put):
        p = {k: put(k, v) for k, v in params0.items()}
        state = tx.init(p)

        @jax.jit
        def step(p, state, g):
            updates, state = tx.update(g, state, p)
            return optax.apply_updates(p, updates), state

        history, ratios = [], []
        for g in grads:
            p, state = step(p, state, {k: put(k, v) for k, v in g.items()})
            history.append({k: np.asarray(v, np.float64) for k, v in p.items()})
            ratios.append(optax.tree_utils.tree_get(state, "trust_ratio"))
        return p, history, ratios

    single = jax.devices()[0]
    unsharded = lambda k, v: jax.device_put(v, single)
    sharded = lambda k, v: jax.device_put(v, NamedSharding(mesh, specs[k]))

    configs = {
        "lamb defaults": (lambda: lj.lamb(0.02), dict(fn=reference.lamb, lr=0.02)),
        "lamb nn l1 clip masks": (
            lambda: lj.lamb(0.02, nesterov="nn", norm="l1", trust_clip=(0.5, 3.0), mask=not_bias,
                            layer_adaptation_mask=not_bias),
            dict(fn=reference.nnlamb, lr=0.02, norm="l1", trust_clip=(0.5, 3.0))),
        "lamb linf": (lambda: lj.lamb(0.02, norm="linf"), dict(fn=reference.lamb, lr=0.02, norm="linf")),
        "lars nesterov=False": (lambda: lj.lars(0.02, weight_decay=1e-3),
                                dict(fn=reference.lars, lr=0.02, weight_decay=1e-3)),
    }
    keys = sorted(shapes)                      # jax.tree.leaves order of a dict
    for name, (make, ref_hyper) in configs.items():
        p_sharded, hist_s, ratios_s = run(make(), sharded)
        _, hist_u, _ = run(make(), unsharded)
        for k in shapes:                        # the update keeps each parameter's sharding
            assert p_sharded[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), len(shapes[k])), (
                name, k, p_sharded[k].sharding)
        for hs, hu in zip(hist_s, hist_u):
            for k in shapes:
                np.testing.assert_allclose(hs[k], hu[k], rtol=2e-6, atol=1e-7, err_msg=f"{name}: {k}")
        # The ratios are those of whole layers: the float64 reference on whole arrays agrees.
        hyper = dict(ref_hyper)
        fn = hyper.pop("fn")
        if "masks" in name:
            flat = [not_bias[k] for k in keys]
            hyper.update(weight_decay_mask=flat, layer_adaptation_mask=flat)
        state, x = None, [params0[k].astype(np.float64) for k in keys]
        for step_k, g in enumerate(grads):
            state, x = fn(state, x, [g[k].astype(np.float64) for k in keys], **hyper)
            for i, k in enumerate(keys):
                np.testing.assert_allclose(hist_s[step_k][k], x[i], rtol=2e-5, atol=1e-6, err_msg=f"{name}: {k}")
                r = ratios_s[step_k][k]
                if not isinstance(r, optax.MaskedNode):
                    np.testing.assert_allclose(float(r), state["trust_ratio"][i], rtol=1e-5, err_msg=f"{name}: {k}")
        print(f"{name}: sharded == unsharded == reference (whole-layer trust ratios)")

    # A per-shard trust ratio would be a different number: the check above could fail.
    kernel, direction = params0["kernel"].astype(np.float64), grads[0]["kernel"].astype(np.float64)
    whole = reference.trust_ratio(kernel, direction)
    per_column = [reference.trust_ratio(kernel[:, j], direction[:, j]) for j in range(8)]
    assert min(abs(r - whole) / whole for r in per_column) > 1e-3

    # Pure data parallelism: parameters replicated, the batch sharded over the devices (XLA all-reduces the
    # gradient), as a Colab TPU run uses it; equal to the same run on one device with the whole batch.
    w0 = {"w1": rng.standard_normal((6, 16)).astype(np.float32) * 0.3, "b1": np.zeros(16, np.float32),
          "w2": rng.standard_normal((16, 3)).astype(np.float32) * 0.3, "b2": np.zeros(3, np.float32)}
    batches = [(rng.standard_normal((64, 6)).astype(np.float32), rng.standard_normal((64, 3)).astype(np.float32))
               for _ in range(5)]

    def loss(w, xb, yb):
        h = jnp.tanh(xb @ w["w1"] + w["b1"])
        return jnp.mean((h @ w["w2"] + w["b2"] - yb) ** 2)

    def train(tx, put_w, put_batch):
        w = {k: put_w(v) for k, v in w0.items()}
        state = tx.init(w)

        @jax.jit
        def step(w, state, xb, yb):
            g = jax.grad(loss)(w, xb, yb)
            updates, state = tx.update(g, state, w)
            return optax.apply_updates(w, updates), state

        out = []
        for xb, yb in batches:
            w, state = step(w, state, put_batch(xb), put_batch(yb))
            out.append({k: np.asarray(v) for k, v in w.items()})
        return w, out

    replicated = NamedSharding(mesh, P())
    by_rows = NamedSharding(mesh, P("x"))
    vector_mask = {k: k.startswith("w") for k in w0}
    for name, make in {"lamb": lambda: lj.lamb(0.05, mask=vector_mask, layer_adaptation_mask=vector_mask),
                       "lars": lambda: lj.lars(0.05, weight_decay=1e-4, nesterov=True)}.items():
        w_dp, hist_dp = train(make(), lambda v: jax.device_put(v, replicated), lambda b: jax.device_put(b, by_rows))
        _, hist_one = train(make(), lambda v: jax.device_put(v, single), lambda b: jax.device_put(b, single))
        assert all(v.sharding.is_fully_replicated for v in w_dp.values())
        for a, b in zip(hist_dp, hist_one):
            for k in w0:
                np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=f"data parallel {name}: {k}")
        print(f"data-parallel {name}: replicated params, sharded batch == one device")
    print("all sharding checks passed")


if __name__ == "__main__":
    _main()
