"""A faithful Python version of the reference V-IRL step loop (spec virl.md §1.4-1.6) over `RouteTemplate`s.

Used as the oracle for the device environment, for expert data and as the benchmark's baseline. Randomness is
explicit (`rails.build_rail`); the `info` dict has the reference keys.
"""
from __future__ import annotations

import numpy as np

from jaxrl_vlm.envs.virl.prompts import observation_action_sequence, render_prompt
from jaxrl_vlm.envs.virl.rails import STOP, RailPoint, RouteTemplate, build_rail
from jaxrl_vlm.envs.virl.verifier import BUDGET_EXHAUSTED_MESSAGE, score_response


class HostNavigationEnv:
    """One V-IRL episode at a time, step for step as the reference `NavigationEnvironment`."""

    def __init__(self, templates: list[RouteTemplate], absolute_action: bool = True, verify_iter: int = 2,
                 drop_rate: float = 0.5, vision: bool = False):
        self.templates, self.absolute_action, self.verify_iter = templates, absolute_action, verify_iter
        self.drop_rate, self.vision = drop_rate, vision

    def reset(self, route: int, heading0: int, keep_draws: np.ndarray) -> dict:
        """Start an episode on route `route` with explicit random inputs; returns the reference info dict."""
        self.template = self.templates[route]
        self.rail: list[RailPoint] = build_rail(self.template, heading0, keep_draws, self.absolute_action,
                                                self.drop_rate)
        self.instruction = self.template.global_instruction(heading0)
        self.t, self.remaining, self.is_success = 0, self.verify_iter, True
        self.actions: list[str] = []
        self.observations = [self.rail[0].oracle_observation]
        return self.info(None, instruction_idx=0)

    @property
    def point(self) -> RailPoint:
        """The current rail point."""
        return self.rail[self.t]

    def info(self, verify_info: str | None, instruction_idx: int | None = None) -> dict:
        """The reference info dict of the current rail point (reset reports instruction_idx 0)."""
        p = self.point
        return {"global_instruction": self.instruction, "current_instruction": p.instruction,
                "instruction_idx": p.instruction_idx if instruction_idx is None else instruction_idx,
                "gt_action": p.gt_action, "current_obs": p.oracle_observation,
                "obs_act_seq": observation_action_sequence(self.observations, self.actions, self.vision),
                "Verify Info": verify_info, "is_success": self.is_success}

    def prompt(self) -> str:
        """The Q_VIRL_L / Q_VIRL_VL user prompt of the current state."""
        seq = observation_action_sequence(self.observations, self.actions, self.vision)
        return render_prompt(self.instruction, self.absolute_action, seq, self.vision)

    def step(self, text: str) -> tuple[float, bool, bool, dict]:
        """(reward, terminated, truncated, info) of one reply, with the reference's forced failure (quirks 5, 6)."""
        self.remaining -= 1
        if self.remaining == -1:
            self.is_success = False
            if self.point.gt_action == STOP:
                return -1.0, True, True, self.info(BUDGET_EXHAUSTED_MESSAGE)
            self.t += 1
            return -1.0, False, True, self.info(BUDGET_EXHAUSTED_MESSAGE)
        gt = self.point.gt_action
        reward, message = score_response(text, gt, self.point.observation)
        terminated = False
        if reward == 1.0:
            if gt == STOP:
                terminated = True
            else:
                self.t += 1
                self.remaining = self.verify_iter
                self.actions.append(gt)
                self.observations.append(self.point.oracle_observation)
        return reward, terminated, False, self.info(message)
