"""V-IRL navigation behind the environment protocol (`envs.protocol`), spec virl.md §1.6-1.10.

An episode is one route. Each route point gets a fresh conversation (§1.9): the chat template's head, the Q_VIRL
prompt of the current state (`VirlEnv.prompt_tokens`) and the generation prompt. A wrong reply continues it with
the user turn 'You failed this trial because ' + the verifier's message, up to `verify_iter` replies; the next call
is the forced failure that ends the episode (§1.6). A correct move opens the next point's conversation; a correct
`stop()` ends the episode with success if no point was failed.

Counts: `step_accuracy` over every env step (retries and the forced failure included, §1.8), trials `steps`.
Outcomes (`OUTCOMES`, per reply; not the forced failure): correct, wrong_action (the verifier's "incorrect action",
-1), wrong_observation (an intersection claimed or missed, -1.5).

PPO's reply log-prob split (training.md §4.4): `action_key` is None, so the action part is a reply's last 5 tokens
(`ppo_math.action_start`'s fallback), as in the reference's runs, whose GP pattern never matches a V-IRL reply: the
action string itself gets the thought weight (0.5), the closing quote, brace and end of turn the action weight.
The intended split (`"action":`) would weight the action string fully; it changes the effective policy gradient.
Splits (`SPLITS`): in_distribution (absolute turns), rule_ood (relative turns) draw routes uniformly; visual_ood
runs its route directory in file order, one episode per route.

V-IRL-VL (vision=True): the Q_VIRL_VL prompt after the template's image placeholder, and `image` renders the
current point's 2x2 grid of views on the device (`views.view_grid`: views of view_size px resized to resolution,
spec §1.5) from the route set's panoramas, which live on the device (`Panoramas`: every panorama a rail can visit,
M x H x W x 3 bytes, replicated; loaded once per route directory and process). That bounds the route sets a device
holds: the synthetic 1000-route city's 459 panoramas of 2048 x 1024 px take 2.9 GB.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.chat import chat_layout, concat_ids
from jaxrl_vlm.envs.virl.env import BUDGET_FEEDBACK, VirlConfig, VirlEnv, VirlParams, build_params, prompt_length_bound
from jaxrl_vlm.envs.virl.evaluation import SPLITS, load_templates
from jaxrl_vlm.envs.virl.observation import PanoramaStore
from jaxrl_vlm.envs.virl.prompts import FEEDBACK_PREFIX
from jaxrl_vlm.envs.virl.verifier import BUDGET_EXHAUSTED_MESSAGE, FEEDBACK_MESSAGES
from jaxrl_vlm.envs.virl.views import view_grid
from jaxrl_vlm.shapes import round_up


OUTCOMES = ("correct", "wrong_action", "wrong_observation")
# the outcome of each verifier feedback code (0 correct, 1-2 the observation messages, 3 the action message)
_OUTCOME_OF_FEEDBACK = (0, 2, 2, 1)


@struct.dataclass
class Panoramas:
    """Device panoramas of a route set: images uint8[M, H, W, 3], row int32[N] (mapping pano index -> image row,
    -1 where a pano is never visited), rotation float32[M] (degrees, from the metadata)."""

    images: jax.Array
    row: jax.Array
    rotation: jax.Array


@functools.lru_cache(maxsize=4)
def _panoramas(route_dir: str) -> Panoramas:
    route_set, templates = load_templates(route_dir)
    store = PanoramaStore(route_set, templates)
    return Panoramas(store.panoramas, jnp.asarray(store.row), store.rotations)


@struct.dataclass
class VirlTaskParams:
    """env: `VirlParams` of the split's routes; head/tail int32[H]/[U] (lengths int32[]): the chat template around
    the first user content (tail: through the generation prompt); feedback int32[5, F] with feedback_len int32[5]:
    the continuation after a reply for each feedback code (`env.step`'s: 0 correct (unused: a correct move opens a
    fresh conversation), 1-3 the verifier's message, 4 the budget's); panoramas: V-IRL-VL's, else None."""

    env: VirlParams
    head: jax.Array
    head_len: jax.Array
    tail: jax.Array
    tail_len: jax.Array
    feedback: jax.Array
    feedback_len: jax.Array
    panoramas: Panoramas | None = None


class VirlTask(protocol.Environment):
    """V-IRL episodes (state `env.VirlState`), one conversation per route point."""

    def __init__(self, env: VirlEnv, *, prompt_width: int, feedback_width: int, conversations: int,
                 ordered_episodes: int | None, vision: bool = False, view_size: int = 640, resolution: int = 1200,
                 trims_replies: bool = False):
        self.env = env
        self.trims_replies = trims_replies
        self.prompt_width = prompt_width
        self.feedback_width = feedback_width
        self.turns = env.config.verify_iter
        self.conversations = conversations
        self.vision = vision
        self.view_size = view_size
        self.resolution = resolution
        self.count_names = {"step_accuracy": "steps"}
        self.outcome_names = OUTCOMES
        self.ordered_episodes = ordered_episodes

    def static_key(self) -> tuple:
        return (self.env.config, self.prompt_width, self.feedback_width, self.conversations, self.ordered_episodes,
                self.vision, self.view_size, self.resolution, self.trims_replies)

    def reset(self, key, params: VirlTaskParams, index):
        num_routes = params.env.slot_valid.shape[0]
        route = index % num_routes if self.ordered_episodes is not None else -1
        return self.env.reset(key, params.env, route)

    def prompt(self, state, params: VirlTaskParams) -> protocol.Prompt:
        ids, length = self.env.prompt_tokens(state, params.env)
        out, length, overflow = concat_ids([(params.head, params.head_len), (ids, length),
                                            (params.tail, params.tail_len)], self.prompt_width)
        return protocol.Prompt(out, length, overflow)

    def step(self, state, reply, reply_len, params: VirlTaskParams):
        active = ~state.done
        new, out = self.env.step(state, reply, reply_len, params.env)
        correct = active & (out.reward == 1.0)
        code = jnp.clip(new.feedback, 0, BUDGET_FEEDBACK)
        replied = active & (code < BUDGET_FEEDBACK)
        outcome = jnp.where(replied, jnp.asarray(_OUTCOME_OF_FEEDBACK + (-1,), jnp.int32)[code], -1)
        return new, protocol.Step(
            reward=out.reward, done=new.done, success=new.done & new.is_success, fresh=correct & ~new.done,
            feedback_ids=params.feedback[code], feedback_len=params.feedback_len[code],
            feedback_overflow=jnp.zeros((), bool), counts={"step_accuracy": (correct, active)}, outcome=outcome)


    def image(self, state, params: VirlTaskParams) -> jax.Array:
        """uint8[2 r + 5, 2 r + 5, 3] (r = resolution): the 2x2 view grid of the current rail point."""
        pano, heading = VirlEnv.current_view(state)
        p = params.panoramas
        row = p.row[pano]
        return view_grid(p.images[row], heading.astype(jnp.float32), p.rotation[row], view_size=self.view_size,
                         resolution=self.resolution)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _rows(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max(len(r) for r in rows))
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, np.array([len(r) for r in rows], np.int32)


def make_task(tokenizer, split: str, route_dir: str | Path, *, verify_iter: int = 2, vision: bool = False,
              view_size: int = 640, resolution: int = 1200,
              template_kwargs: Mapping[str, Any] | None = None) -> tuple[VirlTask, VirlTaskParams]:
    """(VirlTask, VirlTaskParams) of a split of `SPLITS` on the routes of route_dir, with the tokenizer's chat
    template (probed once; prompt pieces tokenized without special tokens). vision: V-IRL-VL, whose images are
    grids of views of view_size px resized to resolution px (spec §1.10: 640 and 1200)."""
    if split not in SPLITS:
        raise ValueError(f"unknown V-IRL split {split!r}; expected one of {sorted(SPLITS)}")
    setting = SPLITS[split]
    _, templates = load_templates(route_dir)
    layout = chat_layout(tokenizer, language_only=not vision, template_kwargs=template_kwargs)
    encode = lambda text: _encode(tokenizer, text)
    env_params, _ = build_params(templates, encode, setting.absolute_action, vision,
                                 strip_ends=layout.first_user_strip)
    env = VirlEnv(VirlConfig(verify_iter=verify_iter, max_prompt_tokens=round_up(prompt_length_bound(env_params), 16)))
    messages = FEEDBACK_MESSAGES + (BUDGET_EXHAUSTED_MESSAGE,)
    prefix = FEEDBACK_PREFIX.lstrip() if layout.user_strip else FEEDBACK_PREFIX
    tail = _encode(tokenizer, layout.assistant_tail)
    user_tail = _encode(tokenizer, layout.user_tail)
    feedback, feedback_len = _rows([tail + _encode(tokenizer, prefix + m) + user_tail for m in messages])
    head, head_len = _rows([_encode(tokenizer, layout.head)])
    user, user_len = _rows([user_tail])
    prompt_width = round_up(int(head_len[0]) + env.config.max_prompt_tokens + int(user_len[0]), 16)
    task = VirlTask(env, prompt_width=prompt_width, feedback_width=int(feedback_len.max()),
                    conversations=int(env_params.slot_valid.shape[1]),
                    ordered_episodes=len(templates) if setting.ordered else None, vision=vision,
                    view_size=view_size, resolution=resolution, trims_replies=layout.assistant_strip)
    params = VirlTaskParams(env_params, jnp.asarray(head[0]), jnp.asarray(head_len[0]), jnp.asarray(user[0]),
                            jnp.asarray(user_len[0]), jnp.asarray(feedback), jnp.asarray(feedback_len),
                            _panoramas(str(Path(route_dir).resolve())) if vision else None)
    return task, params

