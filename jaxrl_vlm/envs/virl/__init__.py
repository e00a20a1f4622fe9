"""V-IRL navigation (spec virl.md): route reader, rails, verifier, prompts and the JAX environment.

Reproduced and fixed reference quirks are listed in QUIRKS.md next to this file.
"""
from jaxrl_vlm.envs.virl.env import (ACTIONS, StepOut, VirlConfig, VirlEnv, VirlParams, VirlState, build_params,
                                     episode_randomness, prompt_length_bound)
from jaxrl_vlm.envs.virl.evaluation import SPLITS, PolicyBatch, VirlEvaluator, evaluate_virl
from jaxrl_vlm.envs.virl.host_env import HostNavigationEnv
from jaxrl_vlm.envs.virl.prompts import Q_VIRL_L, Q_VIRL_VL, RESPONSE_VIRL, expert_response, render_prompt
from jaxrl_vlm.envs.virl.rails import RailPoint, RouteTemplate, build_rail, route_template, sample_episode_randomness
from jaxrl_vlm.envs.virl.reader import RouteSet, load_route_set, parse_navigation_string
from jaxrl_vlm.envs.virl.verifier import FEEDBACK_MESSAGES, re_match, score_response, score_response_bytes
from jaxrl_vlm.envs.virl.verifier_device import feedback_id, feedback_ids, rewards_of

__all__ = [
    "ACTIONS", "FEEDBACK_MESSAGES", "HostNavigationEnv", "PolicyBatch", "Q_VIRL_L", "Q_VIRL_VL", "RESPONSE_VIRL",
    "RailPoint", "RouteSet", "RouteTemplate", "SPLITS", "StepOut", "VirlConfig", "VirlEnv", "VirlEvaluator",
    "VirlParams", "VirlState", "build_params", "build_rail", "episode_randomness", "evaluate_virl", "expert_response",
    "feedback_id", "feedback_ids", "load_route_set", "parse_navigation_string", "prompt_length_bound", "re_match",
    "render_prompt", "rewards_of", "route_template", "sample_episode_randomness", "score_response",
    "score_response_bytes",
]
