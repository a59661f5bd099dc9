"""Figures in the paper's kinds, in one style readable in the rendered book and in print.

- :func:`use_style` -- the book's matplotlib style (called by :func:`lamb.notebook.setup`): a colour-blind-safe
  palette (Okabe and Ito) that also differs by line style in black-and-white print, large enough fonts for
  a figure shrunk to the page width, light grids, no top/right spines, 200-dpi saved figures.
- :func:`curves` -- one metric against steps, one line per run (per optimizer, per batch size), with an
  optional band of the spread over seeds.
- :func:`trust_ratios` -- the trust ratio of each layer over the steps (the paper's trust-ratio figures),
  on a log axis.
- :func:`steps_to_target` -- steps to a target against batch size on log-log axes, with the perfect-scaling
  line (steps proportional to 1/B) through the smallest batch.
- :func:`schedule` -- a learning-rate schedule over the steps.

Every function draws on ``ax`` (a new figure when ``None``) and returns the axes; notebooks end the cell with
``plt.show()``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["PALETTE", "LINESTYLES", "use_style", "curves", "trust_ratios", "steps_to_target", "schedule",
           "style_cycle"]

#: Okabe and Ito's colour-blind-safe palette (black first is left out: it is the text colour).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
#: Line styles cycled with the colours, so that curves stay apart in grey-scale print.
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))


def use_style() -> None:
    """Set matplotlib's rcParams to the book's style (idempotent)."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 100,
        "figure.constrained_layout.use": True,
        "savefig.dpi": 200,
        "savefig.bbox": "tight",
        "font.size": 11,
        "axes.titlesize": 12,
        "axes.labelsize": 11,
        "legend.fontsize": 9.5,
        "legend.frameon": False,
        "xtick.labelsize": 10,
        "ytick.labelsize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "grid.linewidth": 0.6,
        "lines.linewidth": 1.8,
        "axes.prop_cycle": cycler(color=list(PALETTE)) + cycler(linestyle=list(LINESTYLES)),
        "image.cmap": "viridis",
    })


def style_cycle():
    """An endless iterator of ``{"color", "linestyle"}`` pairs in the book's order."""
    return itertools.cycle([{"color": c, "linestyle": s} for c, s in zip(PALETTE, LINESTYLES)])


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def _history(run):
    return run.history if hasattr(run, "history") else run


def _step_key(metric):
    from lamb.experiments.metrics import step_key

    return step_key(metric)


def curves(runs: Mapping[str, object], metric: str = "loss", *, ax=None, log_y: bool = False,
           smooth: int | None = None, xlabel: str = "step", ylabel: str | None = None, title: str | None = None,
           legend_title: str | None = None):
    """``metric`` against steps, one line per entry of ``runs`` (``{label: result or history}``).

    An entry may also be a *list* of runs (seeds): the line is their mean and a band spans their min to max.
    ``smooth`` applies a trailing moving average over that many points (per-step training losses are noisy);
    the first ``smooth - 1`` points average what is available.
    """
    ax = _axes(ax)
    key = _step_key(metric)
    for (label, run), style in zip(runs.items(), style_cycle()):
        group = run if isinstance(run, (list, tuple)) else [run]
        hs = [_history(r) for r in group]
        x = np.asarray(hs[0][key])
        ys = np.stack([_smooth(np.asarray(h[metric], dtype=np.float64), smooth) for h in hs])
        ax.plot(x, ys.mean(axis=0), label=str(label), **style)
        if len(hs) > 1:
            ax.fill_between(x, ys.min(axis=0), ys.max(axis=0), color=style["color"], alpha=0.18, linewidth=0)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or metric.replace("_", " "))
    if title:
        ax.set_title(title)
    if runs:
        ax.legend(title=legend_title)
    return ax


def _smooth(y, window):
    if not window or window <= 1:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def trust_ratios(run, *, ax=None, layers: Sequence[str] | None = None, log_y: bool = True, max_layers: int = 8,
                 title: str | None = None):
    """The trust ratio of each layer against steps (``run.history["trust_ratio"]``).

    ``layers`` picks layers by name (default: the kernels -- names ending in ``kernel`` or ``embedding`` -- or
    all layers when there are none), at most ``max_layers`` of them spread evenly over the parameter tree's
    (alphabetical) order, so that the legend stays readable for deep models; colours run along that order.
    More than four layers put the legend under the axes.
    """
    ax = _axes(ax)
    h = _history(run)
    ratios = h["trust_ratio"]
    if not ratios:
        raise ValueError("this run has no trust ratios: its optimizer keeps none (use lamb.jax.lamb or lars)")
    if layers is None:
        names = [n for n in ratios if n.endswith(("kernel", "embedding"))] or list(ratios)
        if len(names) > max_layers:
            names = [names[i] for i in np.linspace(0, len(names) - 1, max_layers).round().astype(int)]
    else:
        missing = [n for n in layers if n not in ratios]
        if missing:
            raise ValueError(f"no trust ratio for layers {missing}; the run has {list(ratios)}")
        names = list(layers)
    steps = np.asarray(h["step"])
    colors = _sequential(len(names))
    for name, color in zip(names, colors):
        ax.plot(steps, np.asarray(ratios[name]), label=name, color=color, linestyle="-")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("trust ratio")
    if title:
        ax.set_title(title)
    if len(names) > 4:
        ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    else:
        ax.legend(fontsize=8)
    return ax


def _sequential(n):
    """``n`` colours from input (dark) to output (light) layers: depth order reads at a glance."""
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.0, 0.85, max(n, 1))][:n]


def steps_to_target(curves_by_label: Mapping[str, Mapping], *, ax=None, perfect_scaling: bool = True,
                    examples: bool = False, title: str | None = None, target_label: str | None = None):
    """Steps (or ``examples=True``: examples) to a target against batch size, log-log axes.

    ``curves_by_label`` maps a label (an optimizer) to :func:`lamb.experiments.metrics.scaling_curve`'s
    ``{"batch_size", "steps", "examples"}``. Runs that never reached the target (``inf``) are drawn as open
    markers at the top of the axes. ``perfect_scaling`` adds the line ``steps = s_0 B_0 / B`` (constant
    examples) through each curve's smallest batch size that reached the target.
    """
    ax = _axes(ax)
    ykey = "examples" if examples else "steps"
    finite_all = []
    for (label, c), style in zip(curves_by_label.items(), style_cycle()):
        b = np.asarray(c["batch_size"], dtype=np.float64)
        y = np.asarray(c[ykey], dtype=np.float64)
        ok = np.isfinite(y)
        ax.plot(b[ok], y[ok], marker="o", label=str(label), **style)
        finite_all.extend(y[ok])
        if perfect_scaling and ok.any():
            i = np.flatnonzero(ok)[0]
            ref = y[i] * (b[i] / b) if not examples else np.full_like(b, y[i])
            ax.plot(b, ref, color=style["color"], linestyle=":", linewidth=1.0, alpha=0.7)
        if (~ok).any():
            top = max(finite_all) * 1.5 if finite_all else 1.0
            ax.plot(b[~ok], np.full((~ok).sum(), top), marker="o", markerfacecolor="none", linestyle="none",
                    color=style["color"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(("examples" if examples else "steps") + (f" to {target_label}" if target_label else " to target"))
    if perfect_scaling:
        ax.plot([], [], color="0.4", linestyle=":", linewidth=1.0, label="perfect scaling")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def schedule(schedules: Mapping[str, object], steps: int, *, ax=None, title: str | None = None):
    """Learning-rate schedules (``{label: optax schedule}``) over ``0 .. steps - 1``."""
    ax = _axes(ax)
    t = np.arange(steps)
    for (label, fn), style in zip(schedules.items(), style_cycle()):
        ax.plot(t, [float(fn(i)) for i in t], label=str(label), **style)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax
