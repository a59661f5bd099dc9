"""Per-notebook hooks of the Part II notebooks: ``lamb/notebooks/<notebook>.py`` (the notebook's file name).

Each module holds what the command line and the notebook's last section need from the package, so that they
work without executing the notebook:

- ``plan(settings) -> list[lamb.plan.Stage]``: the training the notebook launches at these settings (one
  stage per group of ``train.fit`` calls of one shape), for ``python -m lamb plan`` (see :mod:`lamb.plan`);
- the functions that draw the notebook's main figures from result data (histories, not notebook globals),
  and ``full_scale_figures(exported)`` that draws them from an export (:mod:`lamb.exports`), for
  :func:`lamb.notebook.show_full_scale`.

:mod:`lamb.notebooks.training_harness` is the example to copy.
"""
