"""Large-batch optimization, from Adam to LAMB.

The package behind the book that builds LAMB (You et al., *Large Batch Optimization for Deep Learning:
Training BERT in 76 minutes*, ICLR 2020) from Adam up:

- :mod:`lamb.reference` -- float64 NumPy statements of every algorithm in the paper, the ground truth;
- :mod:`lamb.torch` -- ``Lamb`` and ``Lars`` as ``torch.optim.Optimizer`` subclasses;
- :mod:`lamb.jax` -- optax transformations and the ``lamb``/``lars`` aliases;
- :mod:`lamb.experiments` -- data, models, the training loop and plots that the book's chapters share;
- :mod:`lamb.profiles` -- the smoke/cpu/gpu/tpu settings of every notebook.

The framework subpackages are imported on demand, so ``import lamb`` needs neither torch nor jax.
"""

__version__ = "0.1.0"
