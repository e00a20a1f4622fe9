"""Plots of evaluation histories (matplotlib, headless)."""
from __future__ import annotations

import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def _rates(result: dict[str, Any]) -> list[str]:
    """The rates of a result (evaluator schema): success first, then each count rate (e.g. step_accuracy)."""
    return ["success"] + [k[:-len("_stderr")] for k in result if k.endswith("_stderr") and k != "success_stderr"]


def plot_success_vs_compute(history: Sequence[dict[str, Any]], path: str, title: str = "") -> str:
    """Write a PNG of each split's success rate, and of its other rates (dashed, e.g. V-IRL per-step accuracy),
    with ±1 standard error bars, against training compute.

    history: records {'gflops': float, 'results': {split: result}} with results in the evaluator schema
    (`evaluation.evaluator`). Returns the path written.
    """
    if not history:
        raise ValueError("no evaluation to plot")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
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
    ax.set_xlabel("training compute (GFLOPs)")
    ax.set_ylabel("rate (%)")
    ax.set_title(title or "success vs compute")
    ax.grid(alpha=0.3)
    ax.legend()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
