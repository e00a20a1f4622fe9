"""The task registry of the jobs: config.task -> environment-protocol tasks (`envs.protocol`) for training and for
each evaluation split. The only place above the env packages that names a task; a new task adds one entry here,
one env module and one config.
"""
from __future__ import annotations

from typing import Any

import ml_collections as mlc

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.envs import protocol

Task = tuple[protocol.Environment, Any]


def training_task(config: mlc.ConfigDict, tokenizer) -> Task:
    """The training split of config.task: GP with the configured face rule, OOD hands and suits; V-IRL's
    in-distribution setting (absolute turns) on task.route_dir."""
    task = config.task
    if task.name == "virl":
        from jaxrl_vlm.envs.virl.task import make_task

        return make_task(tokenizer, "in_distribution", task.route_dir, **_virl_settings(config))
    from jaxrl_vlm.envs.general_points.task import GPSplit, make_task

    return make_task(tokenizer, GPSplit(task.face_cards_as_10, task.ood, task.suits), **_gp_settings(config))


def evaluation_tasks(config: mlc.ConfigDict, tokenizer) -> dict[str, Task]:
    """{split: task} of config.eval.splits (`config.eval_splits`)."""
    task = config.task
    splits = config_lib.eval_splits(config)
    if task.name == "virl":
        from jaxrl_vlm.envs.virl.task import make_task

        return {s: make_task(tokenizer, s, task[config_lib.VIRL_ROUTE_KEYS[s]], **_virl_settings(config))
                for s in splits}
    from jaxrl_vlm.envs.general_points.task import make_task

    return {s: make_task(tokenizer, s, **_gp_settings(config)) for s in splits}


def _gp_settings(config: mlc.ConfigDict) -> dict[str, Any]:
    task = config.task
    return dict(language_only=task.language_only, target=task.target, verify_iter=task.verify_iter,
                feedback_tokens=config.ppo.feedback_tokens, resolution=task.resolution,
                card_dir=task.card_dir or None)


def _virl_settings(config: mlc.ConfigDict) -> dict[str, Any]:
    task = config.task
    return dict(verify_iter=task.verify_iter, vision=not task.language_only, view_size=task.view_size,
                resolution=task.resolution)
