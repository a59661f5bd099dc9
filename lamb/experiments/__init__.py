"""The experiment harness shared by the book's chapters and experiment notebooks (JAX first).

Modules (import the one you need; nothing heavy is imported here):

- :mod:`~lamb.experiments.data`, :mod:`~lamb.experiments.text` -- offline datasets, MLM text, deterministic
  batches;
- :mod:`~lamb.experiments.models` -- MLP, small ResNet (GroupNorm), small BERT with an MLM head, as pure JAX
  functions with readable layer names;
- :mod:`~lamb.experiments.train` -- ``fit``: one jitted step for any optax transformation, data parallelism
  over all devices, gradient accumulation, evaluation, per-step history (loss, accuracy, learning rate,
  per-layer trust ratios), progress bar, result files, checkpoint and resume;
- :mod:`~lamb.experiments.schedules` -- warmup + polynomial decay, warmup + step decay, batch-size scaling;
- :mod:`~lamb.experiments.metrics` -- steps and examples to a target, the scaling curve;
- :mod:`~lamb.experiments.tuning` -- learning-rate sweeps with a result cache;
- :mod:`~lamb.experiments.plotting` -- the book's figure style and figure helpers;
- :mod:`~lamb.experiments.ablation`, :mod:`~lamb.experiments.agreement`,
  :mod:`~lamb.experiments.gradient_noise`, :mod:`~lamb.experiments.layer_statistics` -- what chapters of
  Part I use for seed-spread ablations, cross-implementation agreement, gradient noise and layer norms.
"""
