"""`python -m jaxrl_vlm.study --config=configs/study_gp_l.py`: the paper's comparison in one command, SFT against RL
from one SFT-initialised checkpoint at matched training compute, in distribution and out of distribution (spec
generalpoints.md §7, training.md; the paper's Fig. 5-8 and App. C.3).

Stages, each in <out_dir>/<stage>/ and skipped once its `done.json` exists (written last); a stopped stage resumes
from its own checkpoints, so a killed study redoes nothing it finished:
1. `init`: SFT from config.model.path for study.init_steps steps ("Init"); D_init = its tokens. Init is then
   evaluated on config.eval.splits.
2. `sft`: the same SFT run continued from Init (its checkpoint, data position and compute), evaluated whenever its
   compute reaches the next point of the schedule; it ends at the last point.
3. one RL stage per other entry of study.branches (`ppo`, `grpo`, `rloo`: the RL algorithm of that name,
   `ppo.algorithm`; the critic-free ones in groups of study.group_size): RL from Init (ppo.init =
   <out_dir>/init/checkpoints, D_init counted) evaluated at the same schedule.
4. the report: results.json, results.md, and the plots (Fig. 5 success against GFLOPs per split, Fig. 6/7 bars of
   Init and each branch at the largest compute every branch reached, Fig. 8 recognition against success for
   GP-VL).

Schedule: study.points GFLOPs points evenly spaced over (G_init, G_init + study.budget_gflops], G_init = 6 N D_init.
A branch is evaluated after the first step (SFT) or update (RL) whose compute reaches a point, so the branches'
evaluations match in compute up to one step's or update's compute; every record carries its actual GFLOPs. Every
evaluation uses the same episodes of each split (the same seed) and sampling (`job.eval_sampling`: the base model's
generation settings by default, greedy for the embedded model).
Compute follows the paper: SFT 6 N (D_init + D_sft), RL 6 N (D_init + D_rl) + 2 N D_buffer (training/flops.py).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import ml_collections as mlc
from absl import app
from ml_collections import config_flags

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import job
from jaxrl_vlm.distributed import start_job
from jaxrl_vlm.evaluation import plots
from jaxrl_vlm.evaluation.evaluator import outcome_shares

DONE = "done.json"


def stage_config(config: mlc.ConfigDict, stage: str) -> mlc.ConfigDict:
    """The study config as one stage's job: its own out_dir, job 'sft' (init, sft) or 'ppo' (an RL branch with that
    algorithm, starting from Init); no HF export."""
    sub = config.copy_and_resolve_references()
    sub.out_dir = os.path.join(config.out_dir, stage)
    sub.run_name = f"{config.run_name}_{stage}"
    sub.checkpoint.export_hf = False
    if stage in ("init", "sft"):
        sub.job = "sft"
    else:
        from jaxrl_vlm.training.algorithms import ALGORITHMS

        sub.job = "ppo"
        sub.ppo.algorithm = stage
        sub.ppo.group_size = 1 if ALGORITHMS[stage].critic else config.study.group_size
        sub.ppo.init = os.path.join(config.out_dir, "init", "checkpoints")
    return sub


def schedule(init_gflops: float, budget_gflops: float, points: int) -> list[float]:
    """The evaluation points in GFLOPs: `points` evenly spaced over (init_gflops, init_gflops + budget_gflops]."""
    return [init_gflops + budget_gflops * k / points for k in range(1, points + 1)]


def _read_done(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, DONE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _write_done(directory: str, record: dict) -> None:
    """Write a stage's record atomically: a reader sees none or all of it."""
    if jax.process_index() == 0:
        job.write_results(os.path.join(directory, DONE + ".tmp"), record)
        os.replace(os.path.join(directory, DONE + ".tmp"), os.path.join(directory, DONE))


def _evaluate_fn(config: mlc.ConfigDict, model: Any, tokenizer):
    """evaluate(params) -> {split: result} on config.eval.splits, the evaluator built once."""
    runner = job.evaluator(config, model, tokenizer)
    return lambda params: job.evaluate(config, model, tokenizer, params=params, with_evaluator=runner)


def run_init(config: mlc.ConfigDict) -> dict:
    """Stage 1: Init = SFT from the base model for study.init_steps steps, then its evaluation; returns its record
    {'step', 'tokens', 'gflops', 'results'}."""
    from jaxrl_vlm.training.sft import build_mesh, train_sft

    cfg = stage_config(config, "init")
    done = _read_done(cfg.out_dir)
    if done is not None:
        return done
    model, tokenizer = job.load_checkpoint(cfg, None, build_mesh(cfg.mesh))
    summary, state = train_sft(cfg, model=model, tokenizer=tokenizer, stop_after_step=config.study.init_steps)
    results = _evaluate_fn(cfg, model, tokenizer)(state.params)
    record = {"step": summary["steps"], "tokens": summary["tokens"], "gflops": summary["gflops"], "results": results}
    _write_done(cfg.out_dir, record)
    return record


def run_sft_branch(config: mlc.ConfigDict, points: list[float]) -> list[dict]:
    """Stage 2: the SFT run continued from Init (a copy of Init's checkpoints), evaluated at the schedule; returns
    its evaluation history."""
    from jaxrl_vlm.training.sft import build_mesh, train_sft

    cfg = stage_config(config, "sft")
    done = _read_done(cfg.out_dir)
    if done is not None:
        return done["history"]
    checkpoints = os.path.join(cfg.out_dir, "checkpoints")
    if not os.path.isdir(checkpoints) and jax.process_index() == 0:
        shutil.copytree(os.path.join(config.out_dir, "init", "checkpoints"), checkpoints)
    model, tokenizer = job.load_checkpoint(cfg, None, build_mesh(cfg.mesh))
    summary, _ = train_sft(cfg, model=model, tokenizer=tokenizer, evaluate=_evaluate_fn(cfg, model, tokenizer),
                           eval_gflops=points)
    _write_done(cfg.out_dir, {"history": summary["history"]})
    return summary["history"]


def run_rl_branch(config: mlc.ConfigDict, branch: str, init: dict, points: list[float]) -> list[dict]:
    """Stage 3: RL (algorithm `branch`) from Init, evaluated at the schedule; returns its evaluation history."""
    from jaxrl_vlm.training.sft import build_mesh

    cfg = stage_config(config, branch)
    done = _read_done(cfg.out_dir)
    if done is not None:
        return done["history"]
    model, tokenizer = job.load_checkpoint(cfg, cfg.ppo.init, build_mesh(cfg.mesh))
    out = job.train_ppo(cfg, model, tokenizer, init_tokens=init["tokens"], eval_gflops=points)
    _write_done(cfg.out_dir, {"history": out["history"]})
    return out["history"]


def matched_point(curves: dict[str, list[dict]], points: list[float]) -> float | None:
    """The largest schedule point every branch reached (None if some branch reached none)."""
    reached = [max((p for p in points if any(r["gflops"] >= p for r in curve)), default=None)
               for curve in curves.values()]
    return None if None in reached else min(reached)


def record_at(curve: list[dict], point: float) -> dict:
    """A branch's evaluation at a schedule point: the first record whose compute reached it."""
    return next(r for r in curve if r["gflops"] >= point)


def markdown_table(init: dict, curves: dict[str, list[dict]]) -> str:
    """Per split, a Markdown table of every evaluated checkpoint (Init, then each branch's records): GFLOPs, success
    with its standard error, mean reward per reply, and the share of the replies of each verifier outcome."""
    lines = []
    for split, first in init["results"].items():
        outcomes = list(first["outcomes"])
        rates = [k[:-len("_stderr")] for k in first if k.endswith("_stderr") and k != "success_stderr"]
        lines += [f"### {split}", "", "| checkpoint | GFLOPs | success | " + "".join(f"{r} | " for r in rates)
                  + "mean reward | " + " | ".join(outcomes) + " |",
                  "|" + "---|" * (4 + len(rates) + len(outcomes))]
        rows = [("Init", init)] + [(f"{branch} {k + 1}", r) for branch, curve in curves.items()
                                   for k, r in enumerate(curve)]
        for label, record in rows:
            r = record["results"][split]
            shares = outcome_shares(r)
            cells = [label, f"{record['gflops']:.4g}", f"{100 * r['success']:.1f}% ± {100 * r['success_stderr']:.1f}"]
            cells += [f"{100 * r[k]:.1f}% ± {100 * r[f'{k}_stderr']:.1f}" for k in rates]
            cells += [f"{r['mean_reward']:.3f}"] + [f"{100 * shares[o]:.1f}%" for o in outcomes]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(config: mlc.ConfigDict, init: dict, histories: dict[str, list[dict]], points: list[float]) -> dict:
    """results.json, results.md and the plots under config.out_dir; returns the results."""
    curves = {branch: [init] + history for branch, history in histories.items()}
    point = matched_point(histories, points)
    results = {"init": init, "schedule_gflops": points, "branches": histories, "matched_gflops": point}
    out = config.out_dir
    job.write_results(os.path.join(out, "results.json"), results)
    title = config.run_name
    plots.plot_study_curves(curves, os.path.join(out, "success_vs_gflops.png"), title=title)
    table = markdown_table(init, histories)
    if point is not None:
        bars = {"Init": init["results"], **{b: record_at(h, point)["results"] for b, h in histories.items()}}
        plots.plot_study_bars(bars, os.path.join(out, "success_at_equal_compute.png"),
                              title=f"{title}: success at {point:.4g} GFLOPs")
    if "recognition_accuracy" in next(iter(init["results"].values())):
        for split in init["results"]:
            plots.plot_recognition_vs_success(curves, os.path.join(out, f"recognition_vs_success_{split}.png"),
                                              split, title=f"{title} {split}")
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# {title}\n\nSchedule (GFLOPs): {', '.join(f'{p:.4g}' for p in points)}; matched point: "
                f"{'none' if point is None else f'{point:.4g}'}\n\n{table}")
    return results


def run_study(config: mlc.ConfigDict) -> dict:
    """All stages of a validated study config (module docstring); returns the results."""
    init = run_init(config)
    points = schedule(init["gflops"], config.study.budget_gflops, config.study.points)
    histories = {}
    for branch in config_lib.study_branches(config):
        histories[branch] = (run_sft_branch(config, points) if branch == "sft"
                             else run_rl_branch(config, branch, init, points))
    if jax.process_index() != 0:
        return {}
    results = write_report(config, init, histories, points)
    print(markdown_table(init, histories))
    print(f"study written to {config.out_dir} (results.json, results.md, plots)")
    return results


def main(argv) -> None:
    """Validate the study config (before any compilation) and run or resume every stage."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    start_job(config)
    if config.job != "study":
        raise app.UsageError(f"jaxrl_vlm.study runs study configs (job 'study'), got job {config.job!r}")
    run_study(config)


if __name__ == "__main__":
    # defined here, not at import: the job modules (jaxrl_vlm.main) define the same flag, and tests import both
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Study config file (configs/study_*.py).",
                                              lock_config=True)
    app.run(main)
