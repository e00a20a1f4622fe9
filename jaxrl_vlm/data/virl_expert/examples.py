"""V-IRL expert SFT examples (spec training.md §3.4): one per rail step of expert rollouts.

Each example pairs the user prompt of the step (Q_VIRL_L or Q_VIRL_VL, history of ground-truth actions, the random
start heading and drop pattern) with the ResponseVIRL reply filled with the oracle observation, the current
instruction sentence and the ground-truth action. Rollouts are a deterministic function of the seed: a numpy
Generator picks routes uniformly with replacement (the reference's `random.choice`) and each episode's randomness
(`rails.sample_episode_randomness`).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from jaxrl_vlm.envs.virl.host_env import HostNavigationEnv
from jaxrl_vlm.envs.virl.prompts import expert_response
from jaxrl_vlm.envs.virl.rails import RouteTemplate, sample_episode_randomness


@dataclasses.dataclass(frozen=True)
class ExpertStep:
    """One SFT example: prompt/response texts and the rail point it was taken at."""
    episode: int
    route: int
    step: int
    prompt: str
    response: str
    gt_action: str
    pano: int
    heading: int


def expert_steps(templates: list[RouteTemplate], num_episodes: int, seed: int, vision: bool = False,
                 absolute_action: bool = True) -> Iterator[ExpertStep]:
    """Expert rollouts of `num_episodes` episodes, one ExpertStep per rail point (deterministic by seed)."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    rng = np.random.default_rng(seed)
    env = HostNavigationEnv(templates, absolute_action=absolute_action, vision=vision)
    for episode in range(num_episodes):
        route = int(rng.integers(len(templates)))
        heading0, draws = sample_episode_randomness(rng, templates[route].num_legs)
        env.reset(route, heading0, draws)
        for step in range(len(env.rail)):
            point = env.point
            reply = expert_response(point.oracle_observation, point.instruction, point.gt_action)
            yield ExpertStep(episode, route, step, env.prompt(), reply, point.gt_action, point.pano, point.heading)
            reward, terminated, truncated, _ = env.step(reply)
            if reward != 1.0 or truncated:
                raise RuntimeError(f"expert reply was not accepted at route {route}, step {step}: {reply!r}")
            if terminated:
                break
