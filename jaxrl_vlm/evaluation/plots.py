"""Plots of evaluation histories (matplotlib, headless)."""
from __future__ import annotations

import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def plot_success_vs_compute(history: Sequence[dict[str, Any]], path: str, title: str = "") -> str:
    """Write a PNG of each split's success rate (with ±1 standard error bars) against training compute.

    history: records {'gflops': float, 'results': {split: {'success' or 'recognition_accuracy', 'stderr'}}}.
    Returns the path written.
    """
    if not history:
        raise ValueError("no evaluation to plot")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    top = 0.0
    for split in history[0]["results"]:
        xs = [h["gflops"] for h in history]
        ys = [100 * h["results"][split].get("success", h["results"][split].get("recognition_accuracy", 0.0))
              for h in history]
        errs = [100 * h["results"][split]["stderr"] for h in history]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=split)
        top = max([top] + [y + e for y, e in zip(ys, errs)])
    ax.set_ylim(-1.0, min(100.0, max(10.0, 1.15 * top)) + 1.0)
    ax.set_xlabel("training compute (GFLOPs)")
    ax.set_ylabel("success rate (%)")
    ax.set_title(title or "success vs compute")
    ax.grid(alpha=0.3)
    ax.legend()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
