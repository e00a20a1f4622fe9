"""Shared pieces of the jobs: loading a checkpoint (HF, GGUF or a run's orbax directory), evaluating it on the
configured splits of any task (a printed table with standard errors, a JSON file), and the evaluation job."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import ml_collections as mlc

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import tasks
from jaxrl_vlm.evaluation.evaluator import Evaluator, outcome_shares
from jaxrl_vlm.models import api as models_api
from jaxrl_vlm.models.decode_layout import decode_layout
from jaxrl_vlm.models.tokenizer import load_tokenizer
from jaxrl_vlm.training.checkpoint import Checkpointer
from jaxrl_vlm.training.ppo_train import initial_ppo_state
from jaxrl_vlm.training.sft import build_optimizer, mesh_of, place_on_mesh
from jaxrl_vlm.training.sft_step import init_train_state


def _open_newest(directory: str) -> tuple[Checkpointer, int]:
    """(a Checkpointer on a run's `checkpoints/` directory, its newest step); FileNotFoundError without one."""
    checkpointer = Checkpointer(directory, async_save=False)
    step = checkpointer.latest_step()
    if step is None:
        checkpointer.close()
        raise FileNotFoundError(f"no saved step in checkpoint directory {directory!r}")
    return checkpointer, step


def restore_params(config: mlc.ConfigDict, model: Any, directory: str) -> Any:
    """Policy params of the newest checkpoint in `directory` (an SFT or an RL run's, of any ppo.algorithm), placed
    like model.params."""
    checkpointer, step = _open_newest(directory)
    metadata = checkpointer.metadata(step)
    if "compute" in metadata:  # an RL run: params {'policy'} and, for PPO, 'value'; no name saved: PPO's (older runs)
        like, _ = initial_ppo_state(config, model, metadata.get("algorithm", "ppo"))
        state, _ = checkpointer.restore(step, like)
        checkpointer.close()
        return state.params["policy"]
    tx, _ = build_optimizer(config, model.params)
    like = place_on_mesh(init_train_state(model.params, tx), mesh_of(model))  # the saved layout, on the mesh
    state, _ = checkpointer.restore(step, like)
    checkpointer.close()
    return state.params


def load_for_eval(config: mlc.ConfigDict, mesh=None) -> tuple[Any, Any]:
    """(model, tokenizer) of config.eval.checkpoint, else of config.model.path (see `load_checkpoint`)."""
    return load_checkpoint(config, config.eval.checkpoint or None, mesh)


def load_checkpoint(config: mlc.ConfigDict, target: str | None, mesh=None) -> tuple[Any, Any]:
    """(model, tokenizer) of `target`, else of config.model.path.

    target may be an HF directory, a .gguf file, or a run's orbax `checkpoints/` directory (SFT or PPO: its newest
    step's policy params are restored into the architecture of config.model.path).
    """
    base_path = config_lib.resolve_model_path(config.model.path)
    target = target or base_path
    if is_run_checkpoints(target):
        model = models_api.load(base_path, dtype=config.model.param_dtype, mesh=mesh)
        model.params = restore_params(config, model, target)
        return model, load_tokenizer(base_path)
    return models_api.load(target, dtype=config.model.param_dtype, mesh=mesh), load_tokenizer(target)


def is_run_checkpoints(target: str) -> bool:
    """Whether `target` is a run's orbax `checkpoints/` directory (not an HF directory or a .gguf file)."""
    return os.path.isdir(target) and not os.path.isfile(os.path.join(target, "config.json"))


def trained_tokens(target: str) -> int:
    """Tokens the params of `target` were fine-tuned on by this project (D_init of an RL run that starts from it):
    an SFT run's checkpoints hold them ('tokens'); an RL run's (PPO, GRPO, RLOO), its D_init + D_rl (its
    rollout-buffer compute is not carried over); an HF directory or .gguf file counts as 0 (its fine-tuning is
    unknown here)."""
    if not is_run_checkpoints(target):
        return 0
    checkpointer, step = _open_newest(target)
    metadata = checkpointer.metadata(step)
    checkpointer.close()
    if "compute" in metadata:
        return int(metadata["compute"]["init_tokens"]) + int(metadata["compute"]["train_tokens"])
    return int(metadata.get("tokens", 0))


def evaluator(config: mlc.ConfigDict, model: Any, tokenizer) -> Evaluator:
    """The on-device evaluator of config.eval.splits for a loaded model."""
    mesh = model.mesh_rules.mesh if model.mesh_rules is not None else None
    layout = None if mesh is None else decode_layout(model.config, mesh, config.mesh.rollout_tensor, config.model.dtype)
    return Evaluator(model, tokenizer, tasks.evaluation_tasks(config, tokenizer),
                     trim_replies=config.eval.trim_replies, layout=layout)


def generation_settings(model_path: str) -> tuple[float, float]:
    """(temperature, top_p) of a checkpoint's generation_config.json as transformers' `generate` applies it: its
    temperature and top_p (default 1.0 each) when do_sample is true, else greedy (0.0, 1.0); greedy without the
    file (a .gguf). Its top_k (transformers' default 50 when sampling) is not applied here."""
    path = os.path.join(model_path, "generation_config.json")
    if not os.path.isfile(path):
        return 0.0, 1.0
    with open(path) as f:
        settings = json.load(f)
    if not settings.get("do_sample", False):
        return 0.0, 1.0
    return float(settings.get("temperature", 1.0)), float(settings.get("top_p", 1.0))


def eval_sampling(config: mlc.ConfigDict) -> tuple[float, float]:
    """(temperature, top_p) of the evaluation: config.eval.sampling 'checkpoint' (`generation_settings` of
    eval.checkpoint when it is an HF directory with a generation_config.json, else of model.path), 'greedy' or
    'config' (eval.temperature, eval.top_p)."""
    ev = config.eval
    if ev.sampling == "greedy":
        return 0.0, 1.0
    if ev.sampling == "config":
        return float(ev.temperature), float(ev.top_p)
    own = ev.checkpoint and os.path.isfile(os.path.join(ev.checkpoint, "generation_config.json"))
    return generation_settings(ev.checkpoint if own else config_lib.resolve_model_path(config.model.path))


def evaluate(config: mlc.ConfigDict, model: Any, tokenizer, *, params=None,
             with_evaluator: Evaluator | None = None) -> dict[str, dict]:
    """Results (`evaluation.evaluator` schema) of every split of config.eval.splits for `params` (default: the
    model's), sampled as `eval_sampling` says."""
    ev = config.eval
    runner = with_evaluator or evaluator(config, model, tokenizer)
    temperature, top_p = eval_sampling(config)
    return {split: runner.evaluate(split, episodes=ev.episodes, batch_size=ev.batch_size,
                                   max_new_tokens=ev.max_new_tokens, temperature=temperature, top_p=top_p,
                                   seed=config.seed, params=params)
            for split in runner.splits}


def train_ppo(config: mlc.ConfigDict, model: Any, tokenizer, *, init_tokens: int = 0,
              stop_after_update: int | None = None, eval_gflops: Sequence[float] = ()) -> dict[str, Any]:
    """PPO (`training.ppo_train.train_ppo`) on config.task's training split, evaluated on config.eval.splits with
    the on-device evaluator (built once), every eval.every updates or at the compute schedule eval_gflops."""
    from jaxrl_vlm.training.ppo_train import train_ppo as train

    runner = evaluator(config, model, tokenizer)
    return train(config, model, tokenizer, tasks.training_task(config, tokenizer),
                 lambda params: evaluate(config, model, tokenizer, params=params, with_evaluator=runner),
                 init_tokens=init_tokens, stop_after_update=stop_after_update, eval_gflops=eval_gflops)


def _table_rows(split: str, r: dict) -> list[tuple[str, str]]:
    """(row label, cell) of one result: the split's success, each count rate (e.g. "<split> step_accuracy") as
    'p% ± se%', the mean reward, and the share of the replies of each verifier outcome."""
    rates = [k[:-len("_stderr")] for k in r if k.endswith("_stderr") and k != "success_stderr"]
    rows = [(split if k == "success" else f"{split} {k}", f"{100 * r[k]:6.1f}% ± {100 * r[f'{k}_stderr']:4.1f}%")
            for k in ["success"] + rates]
    rows.append((f"{split} mean reward", f"{r['mean_reward']:8.3f}"))
    rows += [(f"{split}   {name}", f"{100 * share:6.1f}%") for name, share in outcome_shares(r).items()]
    return rows


def format_table(columns: dict[str, dict[str, dict]]) -> str:
    """A text table: one column per evaluated model; per split, rows of success and the task's rates ('p% ± se%'),
    the mean reward per reply and the share of the replies of each verifier outcome (what a policy gets wrong)."""
    names = list(columns)
    splits = list(next(iter(columns.values())))
    rows = {name: [row for split in splits for row in _table_rows(split, columns[name][split])] for name in names}
    labels = [label for label, _ in rows[names[0]]]
    width = max([14] + [len(label) + 2 for label in labels])
    lines = ["split".ljust(width) + "".join(n.rjust(20) for n in names)]
    for k, label in enumerate(labels):
        lines.append(label.ljust(width) + "".join(rows[name][k][1].rjust(20) for name in names))
    return "\n".join(lines)


def write_results(path: str, results: Any) -> None:
    """Write results as indented JSON (creating the folder)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


def run_eval(config: mlc.ConfigDict) -> dict:
    """The evaluation job of a validated config: print the table, write <out_dir>/eval.json, return the results."""
    from jaxrl_vlm.training.sft import build_mesh

    model, tokenizer = load_for_eval(config, mesh=build_mesh(config.mesh))
    results = evaluate(config, model, tokenizer)
    if jax.process_index() == 0:
        print(format_table({"checkpoint": results}))
        path = os.path.join(config.out_dir, "eval.json")
        write_results(path, results)
        print(f"results written to {path}")
    return results
