"""Multi-host start-up: one JAX process per host (TPU pod VM, GPU node), all forming one global device mesh."""
from __future__ import annotations

import os

import jax


def initialize() -> None:
    """Call jax.distributed.initialize once per process, before any other JAX call.

    Explicit settings come from JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID; without them JAX detects the cluster itself (TPU pods, SLURM, Open MPI). On CPU hosts
    (tests, laptops) set JAX_CPU_COLLECTIVES=gloo to run cross-process collectives.
    """
    if os.environ.get("JAX_CPU_COLLECTIVES"):
        jax.config.update("jax_cpu_collectives_implementation", os.environ["JAX_CPU_COLLECTIVES"])
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS={address} is set but {missing} are not")
        jax.distributed.initialize(coordinator_address=address, num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()


def start_job(config) -> None:
    """What every entry point does first: quiet library INFO logs, validate the config (before any compilation),
    join the other processes of a multi-host run when config.distributed is set, then build the inputs a job makes
    on first use (V-IRL's synthetic cities for empty route directories, `envs.virl.cities`)."""
    from absl import logging

    from jaxrl_vlm import config as config_lib

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    config_lib.validate(config)
    if config.distributed:
        initialize()
    if config.task.name == "virl":
        from jaxrl_vlm.envs.virl.cities import resolve_route_dirs

        resolve_route_dirs(config)
