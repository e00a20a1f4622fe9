"""Plots of evaluation histories (matplotlib, headless)."""
from __future__ import annotations

import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from jaxrl_vlm.evaluation.evaluator import outcome_shares  # noqa: E402


def _rates(result: dict[str, Any]) -> list[str]:
    """The rates of a result (evaluator schema): success first, then each count rate (e.g. step_accuracy)."""
    return ["success"] + [k[:-len("_stderr")] for k in result if k.endswith("_stderr") and k != "success_stderr"]


def _compute_axis(ax) -> None:
    ax.set_xlabel("training compute (GFLOPs)")
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _rates_panel(ax, history: Sequence[dict[str, Any]]) -> None:
    """Each split's success rate (solid) and other rates (dashed), ±1 standard error, against compute."""
    top = 0.0
    xs = [h["gflops"] for h in history]
    for split, first in history[0]["results"].items():
        for rate in _rates(first):
            ys = [100 * h["results"][split][rate] for h in history]
            errs = [100 * h["results"][split][f"{rate}_stderr"] for h in history]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, linestyle="-" if rate == "success" else "--",
                        label=split if rate == "success" else f"{split} {rate}")
            top = max([top] + [y + e for y, e in zip(ys, errs)])
    ax.set_ylim(-1.0, min(100.0, max(10.0, 1.15 * top)) + 1.0)
    _compute_axis(ax)
    ax.set_ylabel("rate (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_success_vs_compute(history: Sequence[dict[str, Any]], path: str, title: str = "") -> str:
    """Write a PNG of an evaluation history against training compute: each split's success rate and its other
    rates (dashed, e.g. V-IRL per-step accuracy) with ±1 standard error bars; each split's mean reward per reply;
    and per split the shares of the replies by verifier outcome (stacked), so a run that changes no success rate
    still shows what changed in its replies.

    history: records {'gflops': float, 'results': {split: result}} with results in the evaluator schema
    (`evaluation.evaluator`). Returns the path written.
    """
    if not history:
        raise ValueError("no evaluation to plot")
    splits = list(history[0]["results"])
    fig, axes = plt.subplots(1, 2 + len(splits), figsize=(5 * (2 + len(splits)), 4), dpi=110)
    _rates_panel(axes[0], history)
    axes[0].set_title(title or "success vs compute")
    xs = [h["gflops"] for h in history]
    for split in splits:
        axes[1].plot(xs, [h["results"][split]["mean_reward"] for h in history], marker="o", label=split)
    _compute_axis(axes[1])
    axes[1].set_ylabel("mean reward per reply")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    for ax, split in zip(axes[2:], splits):
        shares = [outcome_shares(h["results"][split]) for h in history]
        names = list(shares[0])
        ax.stackplot(xs, [[100 * s[name] for s in shares] for name in names], labels=names, alpha=0.85)
        ax.set_ylim(0, 100)
        _compute_axis(ax)
        ax.set_ylabel("share of replies (%)")
        ax.set_title(f"{split}: verifier outcomes")
        ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)
