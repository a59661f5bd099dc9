"""Ablations: train a list of optimizer configurations over several seeds and compare them with seed noise.

The paper's Figures 1-3 are ablations: one model, one recipe, a few optimizer variants (the trust ratio's
norm, bias correction on or off, Nesterov variants), each a single curve. At small scale a single curve per
variant says little, because two seeds of the *same* variant differ too. This module runs every
configuration with every seed and keeps the whole spread, so that a chapter can say whether the differences
between variants exceed the differences between seeds::

    result = ablation.run({"L1": tx_l1, "L2": tx_l2}, seeds=[0, 1, 2], train=train_fn)
    result.final("test_accuracy")            # {name: array of one final value per seed}
    result.summary("test_accuracy")          # mean, min, max, std per configuration
    result.spread("test_accuracy")           # between-configuration spread against seed spread

``train(transformation, seed)`` trains one run and returns its history: a mapping from metric names to 1-D
arrays over evaluation points, with a ``"step"`` entry giving the step of each point.
:class:`ImageTask` is the book's image task (an MLP on MNIST-1D, data from :mod:`lamb.experiments.data`):
``task.train`` is such a function, and ``task.train_seeds`` trains all seeds of one configuration at once
(``jax.vmap`` over seeds, ``jax.lax.scan`` over steps: one compiled program per configuration, which is what
makes configurations x seeds affordable on two CPU cores); :func:`run_vectorized` uses it::

    task = ImageTask.mnist1d(num_samples=20000, hidden=(256, 256), steps=600, batch_size=1024, eval_every=50)
    result = ablation.run_vectorized({"L1": lj.lamb(0.02, norm="l1"), "L2": lj.lamb(0.02)}, [0, 1, 2],
                                     task.train_seeds)

In a dry run (:func:`lamb.profiles.dry_run`) :meth:`ImageTask.train_seeds` trains every seed for
:data:`lamb.profiles.DRY_RUN_STEPS` steps and evaluates once; :func:`run` and :func:`run_vectorized` keep every
configuration and seed (the spread still needs them) and leave the step count to ``train``.

The training loop here is deliberately small (no checkpoints, no sharding, no progress bar): ablations are
many short runs, where a vectorized loop pays; long single runs belong to the harness's training loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

History = Mapping[str, np.ndarray]


@dataclass
class AblationResult:
    """The histories of every (configuration, seed) run.

    ``histories[name][k]`` is the history of configuration ``name`` with ``seeds[k]``; ``steps`` the evaluation
    steps, shared by every run.
    """

    names: list[str]
    seeds: list[int]
    steps: np.ndarray
    histories: dict[str, list[dict[str, np.ndarray]]]

    def curves(self, metric: str) -> dict[str, np.ndarray]:
        """``{name: array (n_seeds, n_points)}`` of ``metric`` at every evaluation step."""
        self._check_metric(metric)
        return {n: np.stack([h[metric] for h in self.histories[n]]) for n in self.names}

    def final(self, metric: str) -> dict[str, np.ndarray]:
        """``{name: array (n_seeds,)}``: the value of ``metric`` at the last evaluation of each run."""
        return {n: c[:, -1] for n, c in self.curves(metric).items()}

    def summary(self, metric: str) -> dict[str, dict[str, float]]:
        """Mean, min, max and sample standard deviation over seeds of the final ``metric``, per config."""
        out = {}
        for n, values in self.final(metric).items():
            out[n] = {
                "mean": float(np.mean(values)),
                "min": float(np.min(values)),
                "max": float(np.max(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
            }
        return out

    def spread(self, metric: str) -> dict[str, float]:
        """Compare the spread *between* configurations with the spread *between seeds* of one configuration.

        Returns:
          ``between_range``: max minus min of the configurations' mean final values;
          ``within_range``: the largest max-minus-min over seeds within one configuration;
          ``between_std``: standard deviation of the configurations' means;
          ``within_std``: the pooled within-configuration standard deviation,
          :math:`\\sqrt{\\sum_c \\sum_s (y_{cs} - \\bar y_c)^2 / (N - C)}`;
          ``f_statistic`` and ``p_value``: one-way analysis of variance (Fisher's F test) of the null
          hypothesis that every configuration has the same mean (``nan`` when there is no seed spread);
          ``exceeds_seed_noise``: 1.0 when the configuration means differ by more than the seed noise at the 5%
          level (``p_value < 0.05``), else 0.0.
        """
        finals = self.final(metric)
        groups = [np.asarray(v, dtype=np.float64) for v in finals.values()]
        if len(groups) < 2:
            raise ValueError(f"spread needs at least two configurations, got {len(groups)}")
        if any(len(g) < 2 for g in groups):
            raise ValueError("spread needs at least two seeds per configuration")
        means = np.array([g.mean() for g in groups])
        n_total, n_groups = sum(len(g) for g in groups), len(groups)
        ss_within = sum(float(np.sum((g - g.mean()) ** 2)) for g in groups)
        grand = np.concatenate(groups).mean()
        ss_between = sum(len(g) * (g.mean() - grand) ** 2 for g in groups)
        df_between, df_within = n_groups - 1, n_total - n_groups
        within_std = math.sqrt(ss_within / df_within)
        if ss_within > 0:
            from scipy import stats

            f = (ss_between / df_between) / (ss_within / df_within)
            p = float(stats.f.sf(f, df_between, df_within))
        else:
            f = p = float("nan")
        return {
            "between_range": float(means.max() - means.min()),
            "within_range": float(max(g.max() - g.min() for g in groups)),
            "between_std": float(np.std(means, ddof=1)),
            "within_std": within_std,
            "f_statistic": float(f),
            "p_value": p,
            "exceeds_seed_noise": float(p < 0.05) if not math.isnan(p) else 0.0,
        }

    def select(self, names: Sequence[str]) -> "AblationResult":
        """The same result restricted to the configurations ``names`` (to compare a chosen pair)."""
        unknown = [n for n in names if n not in self.histories]
        if unknown:
            raise KeyError(f"unknown configurations {unknown}; the result holds {self.names}")
        return AblationResult(names=list(names), seeds=list(self.seeds), steps=self.steps,
                              histories={n: self.histories[n] for n in names})

    def _check_metric(self, metric: str) -> None:
        first = self.histories[self.names[0]][0]
        if metric not in first:
            raise KeyError(f"unknown metric {metric!r}; the histories hold {sorted(first)}")


def run(configs: Mapping[str, object], seeds: Sequence[int], train: Callable[[object, int], History],
        *, verbose: bool = False) -> AblationResult:
    """Train every configuration with every seed: ``train(configs[name], seed)`` for each pair.

    ``configs`` maps a name to whatever ``train`` takes (for the image task, an optax
    ``GradientTransformation``). Every run must report the same evaluation steps.
    """
    if not isinstance(configs, Mapping) or len(configs) == 0:
        raise ValueError(f"configs must be a non-empty mapping from names to configurations, got {configs!r}")
    seeds = [int(s) for s in seeds]
    if len(seeds) == 0:
        raise ValueError("seeds must hold at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    histories: dict[str, list[dict[str, np.ndarray]]] = {}
    steps = None
    for name, config in configs.items():
        histories[name] = []
        for seed in seeds:
            history = {k: np.asarray(v) for k, v in train(config, seed).items()}
            if "step" not in history:
                raise ValueError(f"train returned no 'step' entry for {name!r}, seed {seed}: {sorted(history)}")
            if steps is None:
                steps = history["step"]
            elif not np.array_equal(steps, history["step"]):
                raise ValueError(f"run {name!r}, seed {seed} evaluated at other steps than the first run")
            histories[name].append(history)
            if verbose:
                last = {k: float(v[-1]) for k, v in history.items() if k != "step" and v.ndim == 1 and len(v)}
                print(f"{name:>12s} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    return AblationResult(names=list(configs), seeds=seeds, steps=np.asarray(steps), histories=histories)


def run_vectorized(configs: Mapping[str, object], seeds: Sequence[int],
                   train_seeds: Callable[[object, list[int]], list[History]], *,
                   verbose: bool = False) -> AblationResult:
    """As :func:`run`, with ``train_seeds(config, seeds)`` training all seeds of one configuration at once
    (e.g. :meth:`ImageTask.train_seeds`, which vectorizes over seeds with ``jax.vmap``)."""
    seeds = [int(s) for s in seeds]
    if len(seeds) == 0:
        raise ValueError("seeds must hold at least one seed")
    cache = {}

    def one(config, seed):
        key = id(config)
        if key not in cache:
            histories = train_seeds(config, seeds)
            if len(histories) != len(seeds):
                raise ValueError(f"train_seeds returned {len(histories)} histories for {len(seeds)} seeds")
            cache[key] = dict(zip(seeds, histories))
        return cache[key][seed]

    return run(configs, seeds, one, verbose=verbose)


# --------------------------------------------------------------------------------------------------
# The image task: an MLP on MNIST-1D, every seed of a configuration trained at once.


@dataclass(frozen=True)
class ImageTask:
    """Classify MNIST-1D (Greydanus 2020: 40-sample 1-D signals of the ten digits, generated locally) with a
    ReLU MLP, trained by any optax transformation for ``steps`` steps of ``batch_size`` examples.

    Batches are drawn without replacement within each epoch (a fresh permutation per epoch and seed). Every
    ``eval_every`` steps the history records the mean training loss since the last evaluation
    (``train_loss``), the loss and accuracy on the held-out split (``test_loss``, ``test_accuracy``) and
    the ``epoch`` (examples seen / training-set size). The seed sets the initial weights and the batch
    order; the data are the same for every seed.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    hidden: tuple[int, ...] = (256, 256)
    steps: int = 1000
    batch_size: int = 256
    eval_every: int = 50

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.steps % self.eval_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of eval_every ({self.eval_every})")
        if self.batch_size > len(self.x_train):
            raise ValueError(f"batch_size ({self.batch_size}) exceeds the training set ({len(self.x_train)})")
        if any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden must hold positive layer widths, got {self.hidden!r}")

    @classmethod
    def mnist1d(cls, num_samples: int = 5000, data_seed: int = 42, **kwargs) -> "ImageTask":
        """MNIST-1D with ``num_samples`` examples (80% train, 20% test), made by the ``mnist1d`` package's
        generator through :func:`lamb.experiments.data.load_mnist1d` (no download, cached on disk); the other
        arguments go to :class:`ImageTask`."""
        x_train, y_train, x_test, y_test = _mnist1d_arrays(int(num_samples), int(data_seed))
        return cls(x_train, y_train, x_test, y_test, **kwargs)

    @classmethod
    def from_settings(cls, settings: Mapping) -> "ImageTask":
        """Build the task from a notebook's settings: ``num_samples``, ``hidden``, ``steps``, ``batch_size``,
        ``eval_every``."""
        return cls.mnist1d(num_samples=settings["num_samples"], hidden=tuple(settings["hidden"]),
                           steps=int(settings["steps"]), batch_size=int(settings["batch_size"]),
                           eval_every=int(settings["eval_every"]))

    def validation_split(self, fraction: float, seed: int = 0) -> "ImageTask":
        """The same task with a held-out ``fraction`` of the *training* set as its evaluation set, for
        choosing hyperparameters without looking at the test set."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        order = np.random.default_rng(seed).permutation(len(self.x_train))
        n_val = int(round(fraction * len(order)))
        if n_val == 0 or len(order) - n_val < self.batch_size:
            raise ValueError(f"fraction {fraction} leaves {len(order) - n_val} training examples for batch "
                             f"size {self.batch_size} and {n_val} for validation")
        val, train = order[:n_val], order[n_val:]
        return dataclasses.replace(self, x_train=self.x_train[train], y_train=self.y_train[train],
                                   x_test=self.x_train[val], y_test=self.y_train[val])

    @property
    def steps_per_epoch(self) -> float:
        return len(self.x_train) / self.batch_size

    @property
    def layer_names(self) -> list[str]:
        """Names of the parameter arrays in ``jax.tree_util`` order of :meth:`init_params`."""
        import jax

        return [jax.tree_util.keystr(path) for path, _ in
                jax.tree_util.tree_flatten_with_path(self.init_params(0))[0]]

    def init_params(self, seed: int):
        """He-initialised weights (normal, variance 2 / fan-in) and zero biases, as ``{"dense_k": {"w", "b"}}``."""
        import jax
        import jax.numpy as jnp

        sizes = [self.x_train.shape[1], *[int(h) for h in self.hidden], int(self.y_train.max()) + 1]
        keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
        return {
            f"dense_{k}": {
                "w": jax.random.normal(key, (fan_in, fan_out), jnp.float32) * jnp.sqrt(2.0 / fan_in),
                "b": jnp.zeros((fan_out,), jnp.float32),
            }
            for k, (key, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
        }

    @staticmethod
    def apply(params, x):
        """The MLP's logits: ReLU after every layer but the last."""
        import jax

        n = len(params)
        for k in range(n):
            x = x @ params[f"dense_{k}"]["w"] + params[f"dense_{k}"]["b"]
            if k < n - 1:
                x = jax.nn.relu(x)
        return x

    def loss(self, params, x, y):
        """Mean softmax cross-entropy."""
        import optax

        return optax.softmax_cross_entropy_with_integer_labels(self.apply(params, x), y).mean()

    def gradients(self, params, seed: int = 0, batch_size: int | None = None):
        """The gradient of the loss on one random training batch (for per-layer measurements)."""
        import jax

        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self.x_train), size=batch_size or self.batch_size, replace=False)
        return jax.grad(self.loss)(params, self.x_train[idx], self.y_train[idx])

    def train(self, tx, seed: int) -> History:
        """Train one seed; see :meth:`train_seeds`."""
        return self.train_seeds(tx, [seed])[0]

    def train_seeds(self, tx, seeds: Sequence[int], return_params: bool = False):
        """Train one run per seed with the optax transformation ``tx``, all seeds at once (``jax.vmap``).

        Returns one history per seed (see the class docstring); with ``return_params``, also the final
        parameters of each run (a pytree with a leading seed axis).
        """
        import jax
        import jax.numpy as jnp
        import optax

        from lamb import profiles

        seeds = [int(s) for s in seeds]
        steps = profiles.dry_run_steps(self.steps)
        if steps != self.steps:  # dry run: DRY_RUN_STEPS steps, evaluated once
            return dataclasses.replace(self, steps=steps, eval_every=min(self.eval_every, steps)).train_seeds(
                tx, seeds, return_params)
        n_train = len(self.x_train)
        x_train, y_train = jnp.asarray(self.x_train), jnp.asarray(self.y_train)
        x_test, y_test = jnp.asarray(self.x_test), jnp.asarray(self.y_test)
        epochs = -(-self.steps * self.batch_size // n_train)

        def batch_order(seed):
            keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), epochs)
            order = jnp.concatenate([jax.random.permutation(k, n_train) for k in keys])
            return order[: self.steps * self.batch_size].reshape(self.steps, self.batch_size)

        def init(seed):
            params = self.init_params(seed)
            return params, tx.init(params)

        def chunk(params, opt_state, indices):
            def step(carry, idx):
                params, opt_state = carry
                loss, grads = jax.value_and_grad(self.loss)(params, x_train[idx], y_train[idx])
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), loss

            (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), indices)
            logits = self.apply(params, x_test)
            test_loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_test).mean()
            test_acc = jnp.mean(jnp.argmax(logits, -1) == y_test)
            return params, opt_state, (losses.mean(), test_loss, test_acc)

        # Seeds vary the initial weights and batch order: vmap over the seed axis, one compiled program.
        params, opt_state = _stack([init(s) for s in seeds])
        orders = jnp.stack([batch_order(s) for s in seeds])
        run_chunk = jax.jit(jax.vmap(chunk))
        records = []
        for start in range(0, self.steps, self.eval_every):
            params, opt_state, metrics = run_chunk(params, opt_state, orders[:, start:start + self.eval_every])
            records.append([np.asarray(m) for m in metrics])
        steps = np.arange(self.eval_every, self.steps + 1, self.eval_every)
        histories = []
        for k in range(len(seeds)):
            histories.append({
                "step": steps,
                "epoch": steps * self.batch_size / n_train,
                "train_loss": np.array([r[0][k] for r in records], dtype=np.float64),
                "test_loss": np.array([r[1][k] for r in records], dtype=np.float64),
                "test_accuracy": np.array([r[2][k] for r in records], dtype=np.float64),
            })
        return (histories, params) if return_params else histories


def _stack(trees):
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _mnist1d_arrays(num_samples: int, data_seed: int):
    """MNIST-1D arrays (float32 signals, int32 labels) from :func:`lamb.experiments.data.load_mnist1d`
    (generated locally, cached on disk)."""
    from lamb.experiments import data

    d = data.load_mnist1d(seed=data_seed, num_samples=num_samples)
    return (d.x_train.astype(np.float32), d.y_train.astype(np.int32),
            d.x_test.astype(np.float32), d.y_test.astype(np.int32))
