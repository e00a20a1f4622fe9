"""`python -m jaxrl_vlm.plan --config=configs/X.py [--config.a.b=value ...] --target=v5p-128 [--json=PATH]`:
compile every program of the config's job for a target's chips on this host, and say whether each fits.

Nothing is loaded: the model is built from its config.json alone (`models.abstract`; e.g.
--config.model.path=configs/models/llama-3.2-11b-vision-instruct, the architecture without weights) and the programs
(`planning.programs`: SFT step, RL rollout and update, evaluation rollout) are compiled with the config's mesh,
batch and micro-batch settings for the target's devices (`planning.targets`: TPU slices through libtpu's topology
descriptions, GPU nodes through the CUDA plugin's deviceless compilation). Per program it prints per-chip
arguments / outputs / temporaries / total against the chip's HBM, FLOPs and bytes per execution, collectives, a
roofline lower bound of the execution time and the MFU it implies (`planning.analysis`); decoding programs also
get the bound of one decode step. Exit status: 0 all fit, 1 a program does not fit (named, with what to change),
2 bad input (unknown target, a config or mesh that cannot work), in seconds, before any compilation.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the plan runs no device; a GPU plugin without a driver must not start

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py).", lock_config=True)
_TARGET = flags.DEFINE_string("target", None, "Target: a TPU accelerator type (v5p-128, v5e-256, v4-32, v6e-64) or "
                              "a GPU node (h100x8, h200x8, 2xh100x8).")
_JSON = flags.DEFINE_string("json", "", "Also write the reports to this JSON file.")
_PROGRAMS = flags.DEFINE_list("programs", [], "Compile only these programs (default: all of the job's: sft_step, "
                              "reshard, rollout, update, reference_scoring, eval_rollout).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Tokenizer for the task's prompts when the model directory has "
                                 "none (default: the embedded default's; token widths are then an estimate).")


def main(argv) -> None:
    """Exit 0 when every program fits, 1 when one does not, 2 on bad input."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not _TARGET.value:
        raise app.UsageError("--target is required (e.g. v5p-128, v5e-256, h100x8)")
    from jaxrl_vlm.planning.run import EXIT_BAD_INPUT, exit_status, run_plan

    try:
        reports = run_plan(_CONFIG.value, _TARGET.value, _TOKENIZER.value, only=tuple(_PROGRAMS.value))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"plan: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump([r.to_json() for r in reports], f, indent=1)
    sys.exit(exit_status(reports))


if __name__ == "__main__":
    app.run(main)
