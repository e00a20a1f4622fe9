"""Checkpoints with orbax: asynchronous saves, keep the last N, exact resume of train state and data position."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves {train state pytree, JSON-able metadata (data iterator state, config)} under directory/<step>/.

    Saves are asynchronous (the step returns while the arrays are written); `wait()` blocks until the last save is
    on disk. `restore_latest(abstract_state)` restores onto the shardings of `abstract_state` (a pytree of arrays or
    jax.ShapeDtypeStruct with .sharding), so a run resumes on any mesh.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1, async_save: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, metadata: dict | None = None, *, force: bool = False) -> bool:
        """Queue a save of `state` (pytree of arrays) and `metadata` (JSON-able dict) at `step`; True if saved."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata or {}))
        return self._manager.save(step, args=args, force=force)

    def latest_step(self) -> int | None:
        """The newest finished step on disk, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps kept on disk, ascending."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, metadata) saved at `step`, placed like `abstract_state`."""
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})")
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore())
        )
        return restored.state, dict(restored.metadata or {})

    def metadata(self, step: int) -> dict:
        """The JSON metadata saved at `step` (without reading the arrays)."""
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})")
        restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        return dict(restored.metadata or {})

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """(step, state, metadata) of the newest checkpoint, or None when the directory has none."""
        step = self.latest_step()
        if step is None:
            return None
        state, metadata = self.restore(step, abstract_state)
        return step, state, metadata

    def wait(self) -> None:
        """Block until every queued save is written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self._manager.wait_until_finished()
        self._manager.close()
