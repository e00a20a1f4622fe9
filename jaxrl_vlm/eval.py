"""`python -m jaxrl_vlm.eval --config=configs/X.py [--config.eval.checkpoint=PATH]`: evaluate a checkpoint."""
from __future__ import annotations

from absl import app
from ml_collections import config_flags

from jaxrl_vlm.distributed import start_job
from jaxrl_vlm import job

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py).", lock_config=True)


def main(argv) -> None:
    """Evaluate config.eval.checkpoint (or config.model.path) on config.eval.splits; print and write JSON."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    start_job(config)
    job.run_eval(config)


if __name__ == "__main__":
    app.run(main)
