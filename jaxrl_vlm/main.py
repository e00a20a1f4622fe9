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
    from jaxrl_vlm.evaluation import job
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


def main(argv) -> None:
    """Validate the config (before any compilation) and run its job."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    start_job(config)
    if config.job == "sft":
        run_sft_job(config)
    elif config.job == "eval":
        from jaxrl_vlm.evaluation.job import run_eval

        run_eval(config)
    else:
        raise NotImplementedError(f"config.job={config.job!r} is not implemented yet (PPO lands with issue 5)")


if __name__ == "__main__":
    app.run(main)
