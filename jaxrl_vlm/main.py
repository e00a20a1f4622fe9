"""`python -m jaxrl_vlm.main --config=configs/X.py [--config.a.b=value ...]`: run the job the config names."""
from __future__ import annotations

import os

import jax
from absl import app
from ml_collections import config_flags

from jaxrl_vlm.distributed import start_job

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py).", lock_config=True)


def run_sft_job(config) -> dict:
    """SFT, with evaluation of the initial and the trained model on the configured splits."""
    from jaxrl_vlm import job
    from jaxrl_vlm.training.sft import train_sft

    from jaxrl_vlm.training.sft import build_mesh

    model, tokenizer = job.load_for_eval(config, mesh=build_mesh(config.mesh))
    before = job.evaluate(config, model, tokenizer)
    summary, state = train_sft(config, model=model, tokenizer=tokenizer)
    after = job.evaluate(config, model, tokenizer, params=state.params)
    results = {"initial": before, "after_sft": after, "sft": {k: summary[k] for k in ("steps", "loss")}}
    if jax.process_index() == 0:
        print(job.format_table({"initial": before, "after SFT": after}))
        job.write_results(os.path.join(config.out_dir, "results.json"), results)
    return results


def run_ppo_job(config) -> dict:
    """RL (config.ppo.algorithm: PPO, GRPO, RLOO) from an SFT warm start (or ppo.init), with ID/OOD evaluation
    before, during and after; writes results.json (keys before_ppo / after_ppo whatever the algorithm),
    success_vs_gflops.png, checkpoints and (checkpoint.export_hf) hf_export/."""
    from jaxrl_vlm import config as config_lib
    from jaxrl_vlm import job
    from jaxrl_vlm.evaluation.plots import plot_success_vs_compute
    from jaxrl_vlm.models import api as models_api
    from jaxrl_vlm.training.sft import build_mesh, train_sft

    init = config.ppo.init
    mesh = build_mesh(config.mesh)
    target = None if init in ("", config_lib.PPO_INIT_BASE) else init
    model, tokenizer = job.load_checkpoint(config, target, mesh)
    init_tokens = 0 if target is None else job.trained_tokens(target)
    if init == "":
        warm = config.copy_and_resolve_references()
        warm.out_dir = os.path.join(config.out_dir, "sft_warm_start")
        warm.checkpoint.export_hf = False
        summary, sft_state = train_sft(warm, model=model, tokenizer=tokenizer)
        model.params, init_tokens = sft_state.params, summary["tokens"]
    out = job.train_ppo(config, model, tokenizer, init_tokens=init_tokens)
    before, after = out["history"][0], out["history"][-1]
    name = config.ppo.algorithm.upper()
    results = {"before_ppo": before, "after_ppo": after, "history": out["history"], "compute": out["compute"]}
    if jax.process_index() == 0:
        print(job.format_table({f"before {name}": before["results"], f"after {name}": after["results"]}))
        print(f"training compute: {before['gflops']:.4g} GFLOPs before {name}, {after['gflops']:.4g} after")
        job.write_results(os.path.join(config.out_dir, "results.json"), results)
        plot = plot_success_vs_compute(out["history"], os.path.join(config.out_dir, "success_vs_gflops.png"),
                                       title=f"{name} {config.run_name}")
        print(f"results: {os.path.join(config.out_dir, 'results.json')}; plot: {plot}")
    if config.checkpoint.export_hf and hasattr(model, "export"):
        models_api.with_params(model, out["params"]).export(os.path.join(config.out_dir, "hf_export"))
    return results


def main(argv) -> None:
    """Validate the config (before any compilation) and run its job."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    start_job(config)
    if config.job == "sft":
        run_sft_job(config)
    elif config.job == "eval":
        from jaxrl_vlm.job import run_eval

        run_eval(config)
    else:
        run_ppo_job(config)


if __name__ == "__main__":
    app.run(main)
