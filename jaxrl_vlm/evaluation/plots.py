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


def smoothed(ys: Sequence[float], polyorder: int = 3) -> list[float]:
    """Savitzky-Golay smoothing (polynomial order 3, as the paper's curves; window: the longest odd one the points
    allow, at most 7); fewer than 5 points are returned as they are."""
    from scipy.signal import savgol_filter

    n = len(ys)
    window = min(7, n if n % 2 else n - 1)
    if window <= polyorder:
        return list(ys)
    return [float(y) for y in savgol_filter(list(ys), window, polyorder)]


def _branch_points(curve: Sequence[dict[str, Any]], split: str, rate: str) -> tuple[list, list, list]:
    """(gflops, rate %, stderr %) of a branch's evaluations (study records {'gflops', 'results'})."""
    return ([c["gflops"] for c in curve], [100 * c["results"][split][rate] for c in curve],
            [100 * c["results"][split][f"{rate}_stderr"] for c in curve])


def plot_study_curves(curves: dict[str, Sequence[dict[str, Any]]], path: str, title: str = "") -> str:
    """The paper's Fig. 5: per split, each branch's success rate against training GFLOPs from the shared Init
    (every branch's curve starts at Init's record), raw points with ±1 standard error and the Savitzky-Golay
    smoothed curve. curves: {branch: [records {'gflops', 'results': {split: result}}]}."""
    splits = list(next(iter(curves.values()))[0]["results"])
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4), dpi=110, squeeze=False)
    for ax, split in zip(axes[0], splits):
        for k, (branch, curve) in enumerate(curves.items()):
            xs, ys, errs = _branch_points(curve, split, "success")
            color = f"C{k}"
            ax.errorbar(xs, ys, yerr=errs, fmt="o", color=color, alpha=0.5, capsize=2)
            ax.plot(xs, smoothed(ys), color=color, label=branch)
        ax.set_title(f"{title} {split}".strip())
        ax.set_ylabel("success (%)")
        _compute_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_study_bars(points: dict[str, dict[str, dict]], path: str, title: str = "") -> str:
    """The paper's Fig. 6/7: per split, grouped bars of success (±1 standard error) of each checkpoint at equal
    compute (e.g. Init, SFT and RL at the largest compute both branches reached). points: {label: {split:
    result}}."""
    labels = list(points)
    splits = list(points[labels[0]])
    fig, ax = plt.subplots(figsize=(1.8 * len(splits) * len(labels) + 1, 4), dpi=110)
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        xs = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(splits))]
        ys = [100 * points[label][s]["success"] for s in splits]
        errs = [100 * points[label][s]["success_stderr"] for s in splits]
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=label)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("success (%)")
    ax.set_title(title or "success at equal compute")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_recognition_vs_success(curves: dict[str, Sequence[dict[str, Any]]], path: str, split: str,
                                title: str = "") -> str:
    """The paper's Fig. 8 (GP-VL): each checkpoint's recognition accuracy against its success rate on a split,
    per branch, with ±1 standard errors. curves as in `plot_study_curves`."""
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    for k, (branch, curve) in enumerate(curves.items()):
        results = [c["results"][split] for c in curve]
        ax.errorbar([100 * r["recognition_accuracy"] for r in results], [100 * r["success"] for r in results],
                    xerr=[100 * r["recognition_accuracy_stderr"] for r in results],
                    yerr=[100 * r["success_stderr"] for r in results], fmt="o-", color=f"C{k}", capsize=2,
                    label=branch, alpha=0.8)
    ax.set_xlabel(f"recognition accuracy on {split} (%)")
    ax.set_ylabel(f"success on {split} (%)")
    ax.set_title(title or "recognition vs success")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
