"""Metric sinks for training loops: a progress bar, a JSONL file, TensorBoard event files and optional wandb."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm


def _scalar(value: Any) -> float | int | str:
    if isinstance(value, (str, bool, int)):
        return value
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric values must be scalars, got shape {array.shape}")
    return array.item()


class MetricsLogger:
    """Writes every `log(step, metrics)` to <out_dir>/metrics.jsonl and TensorBoard events, and shows a progress bar.

    Only the process with `enabled=True` (usually jax.process_index() == 0) writes anything.
    """

    def __init__(self, out_dir: str, total_steps: int, *, enabled: bool = True, tensorboard: bool = True,
                 wandb_project: str | None = None, config: Mapping[str, Any] | None = None, desc: str = "train",
                 initial_step: int = 0):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, config=dict(config or {}), dir=out_dir)
        self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, dynamic_ncols=True)

    def log(self, step: int, metrics: Mapping[str, Any], *, advance: int = 0) -> None:
        """Record scalar metrics at `step`; advance the progress bar by `advance` steps."""
        if not self.enabled:
            return
        row = {k: _scalar(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **row}) + "\n")
        self._jsonl.flush()
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                if self._tb is not None:
                    self._tb.add_scalar(key, value, int(step))
        if self._wandb is not None:
            self._wandb.log(row, step=int(step))
        shown = {k: f"{v:.4g}" for k, v in row.items() if isinstance(v, float) and k in ("loss", "tokens_per_s", "success")}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(advance)

    def close(self) -> None:
        """Flush and close every sink."""
        if not self.enabled:
            return
        self._bar.close()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
