"""The V-IRL navigation environment in JAX (spec virl.md §1.4-1.8): pure, jittable, vmappable reset/step.

Rails live on the device as padded per-route "slot" arrays (every interpolation candidate and key point of a route,
`rails.RouteTemplate`); `reset` draws the route, the initial heading and the drop pattern from a JAX key and compacts
the kept slots into the episode's rail with a cumulative sum, exactly as `rails.build_rail` does on the host for the
same draws (`episode_randomness`). `step` scores reply bytes with `verifier_device`, applies the reference budget
(forced failure on the (verify_iter+1)-th call, skip-ahead without a history update) and updates the
`obs_act_seq` history. `prompt_tokens` assembles the Q_VIRL_L / Q_VIRL_VL prompt as token ids.

VL hook: the current view is `(state.pano[state.t], state.heading[state.t])`; `current_view` returns the pano index
and heading, which a renderer (`views.py` of the city package) turns into the 2x2 grid.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.virl.prompt_tokens import Encode, StringTable, assemble, template_segments
from jaxrl_vlm.envs.virl.prompts import FEEDBACK_PREFIX, INTERSECTION_TEXT, VL_CURRENT_OBSERVATION
from jaxrl_vlm.envs.virl.rails import (FORWARD, RELATIVE_LABELS, STOP, STRAIGHT_LINE_LENGTH, RouteTemplate,
                                       turn)
from jaxrl_vlm.envs.virl.reader import DIRECTIONS
from jaxrl_vlm.envs.virl.verifier import BUDGET_EXHAUSTED_MESSAGE, FEEDBACK_MESSAGES, FEEDBACK_REWARDS
from jaxrl_vlm.envs.virl.verifier_device import feedback_id

ACTIONS = (FORWARD, STOP) + tuple(turn(d) for d in DIRECTIONS) + tuple(turn(r) for r in RELATIVE_LABELS)
FORWARD_ID, STOP_ID, ABS_BASE, REL_BASE = 0, 1, 2, 2 + len(DIRECTIONS)
BUDGET_FEEDBACK = len(FEEDBACK_MESSAGES)  # feedback code of a forced failure
NO_FEEDBACK = -1  # after reset


@dataclasses.dataclass(frozen=True)
class VirlConfig:
    """Static settings (spec virl.md §1.10 defaults). The action space and modality live in `VirlParams`, so one
    compiled environment serves all evaluation settings."""
    verify_iter: int = 2
    drop_rate: float = 0.5
    max_prompt_tokens: int = 1024
    pad_id: int = 0


class VirlParams(NamedTuple):
    """Device arrays of a route set: per-route slots [R, S], strings and token tables, and the setting."""
    absolute_action: jax.Array  # bool[] compass (True) or relative (False) turn labels
    vision: jax.Array  # bool[] Q_VIRL_VL prompt and image current-observation line
    slot_valid: jax.Array  # bool[R, S] slot exists (candidates: relocation and 8 m test passed)
    slot_candidate: jax.Array  # bool[R, S]
    slot_draw: jax.Array  # int32[R, S] flat index leg * 5 + candidate into the uniforms
    slot_pano: jax.Array  # int32[R, S]
    slot_heading: jax.Array  # int32[R, S], -1 at the start (initial heading)
    slot_action_abs: jax.Array  # int32[R, S] into ACTIONS
    slot_action_rel: jax.Array  # int32[R, S] into ACTIONS, -1 at the start (depends on the heading)
    slot_obs: jax.Array  # int32[R, S] observation string id
    slot_gt_intersection: jax.Array  # bool[R, S] 'intersection' in the landmark text (verifier)
    slot_sentence: jax.Array  # int32[R, S] 0-based sentence index
    random_heading: jax.Array  # bool[R]
    init_heading: jax.Array  # int32[R]
    first_degree: jax.Array  # int32[R]
    instruction_piece: jax.Array  # int32[R, 4] token-table row of the global instruction per first label
    obs_piece: jax.Array  # int32[O] row of '{obs}\n'
    obs_intersection: jax.Array  # bool[O] INTERSECTION_TEXT in the observation (VL current line)
    action_piece: jax.Array  # int32[len(ACTIONS)] row of '{action}\n'
    action_bytes: jax.Array  # uint8[len(ACTIONS), 32]
    action_len: jax.Array  # int32[len(ACTIONS)]
    o_prefix: jax.Array  # int32[S + 2] row of 'O_{i}: '
    a_prefix: jax.Array  # int32[S + 2] row of 'A_{i}: '
    segments: jax.Array  # int32[4] rows of the 3 template segments of the setting and '\n'
    vl_current: jax.Array  # int32[2] rows of the VL current-observation line without / with the intersection
    feedback_piece: jax.Array  # int32[5] rows of 'You failed this trial because ' + message
    tokens: jax.Array  # int32[N, W] token table
    token_lens: jax.Array  # int32[N]


class VirlState(NamedTuple):
    """One episode (vmap for a batch). Rail arrays are [S]; history arrays [S + 1]."""
    route: jax.Array
    heading0: jax.Array
    first_label: jax.Array
    pano: jax.Array
    heading: jax.Array
    action: jax.Array
    obs: jax.Array
    gt_intersection: jax.Array
    sentence: jax.Array
    num_points: jax.Array
    t: jax.Array
    remaining: jax.Array
    is_success: jax.Array
    done: jax.Array
    hist_obs: jax.Array
    hist_act: jax.Array
    num_hist: jax.Array
    feedback: jax.Array
    num_steps: jax.Array
    num_correct: jax.Array


class StepOut(NamedTuple):
    """Per-step outputs: reward float32, terminated/truncated bool, feedback code (0-3 verifier, 4 forced)."""
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    feedback: jax.Array


def _relative_label_id(delta: jax.Array) -> jax.Array:
    """Index into RELATIVE_LABELS of a heading change (no wrap-around, quirk 1)."""
    return jnp.select([delta < -45, delta > 45, delta <= 0], [0, 1, 2], 3).astype(jnp.int32)


def episode_randomness(key: jax.Array, num_legs: int) -> tuple[jax.Array, jax.Array]:
    """(heading0 int32 in [0, 360), keep_draws float32[num_legs, 5]) drawn from a key, as `reset` uses them."""
    k_heading, k_draw = jax.random.split(key)
    return (jax.random.randint(k_heading, (), 0, 360, jnp.int32),
            jax.random.uniform(k_draw, (num_legs, STRAIGHT_LINE_LENGTH)))


def max_legs(params: VirlParams) -> int:
    """Rows of the per-episode uniforms: one per possible leg (a route has at most as many legs as slots)."""
    return int(params.slot_valid.shape[1]) + 1


def build_params(templates: list[RouteTemplate], encode: Encode, absolute_action: bool = True,
                 vision: bool = False, strip_ends: tuple[bool, bool] = (False, False)) -> tuple[VirlParams, list[str]]:
    """Host-side: tokenise every prompt piece and pad the route slots. Returns (params, table strings).

    The token table holds the template segments of all four settings, so params of the same routes have the same
    shapes whatever the setting (no recompilation). strip_ends: drop the prompt's leading / trailing whitespace (for
    chat templates that trim message contents)."""
    r, s = len(templates), max(len(t.slots) for t in templates)
    table = StringTable()
    obs_strings = StringTable()
    f = {name: np.zeros((r, s), dtype) for name, dtype in [
        ("valid", bool), ("candidate", bool), ("draw", np.int32), ("pano", np.int32), ("heading", np.int32),
        ("abs", np.int32), ("rel", np.int32), ("obs", np.int32), ("gti", bool), ("sentence", np.int32)]}
    instruction = np.zeros((r, len(RELATIVE_LABELS)), np.int32)
    for i, t in enumerate(templates):
        for j, sl in enumerate(t.slots):
            oracle = f"{sl.observation}; {'' if sl.gt_absolute == STOP else sl.intersection_observation}"
            f["valid"][i, j] = sl.pano >= 0
            f["candidate"][i, j] = sl.is_candidate
            f["draw"][i, j] = sl.leg * STRAIGHT_LINE_LENGTH + max(sl.candidate, 0)
            f["pano"][i, j] = sl.pano
            f["heading"][i, j] = -1 if sl.heading is None else sl.heading
            f["abs"][i, j] = ACTIONS.index(sl.gt_absolute)
            f["rel"][i, j] = -1 if sl.gt_relative is None else ACTIONS.index(sl.gt_relative)
            f["obs"][i, j] = obs_strings.add(oracle)
            f["gti"][i, j] = "intersection" in sl.observation
            f["sentence"][i, j] = sl.instruction
        for k, label in enumerate(RELATIVE_LABELS):
            instruction[i, k] = table.add(t.global_instruction_with_first_label(label))
    for v in (False, True):
        for a in (True, False):
            for x in template_segments(v, a):
                table.add(x)
    head, middle, tail = template_segments(vision, absolute_action)
    head, tail = head.lstrip() if strip_ends[0] else head, tail.rstrip() if strip_ends[1] else tail
    segments = [table.add(x) for x in (head, middle, tail, "\n")]
    obs_piece = [table.add(o + "\n") for o in obs_strings.strings]
    action_piece = [table.add(a + "\n") for a in ACTIONS]
    o_prefix = [table.add(f"O_{i}: ") for i in range(s + 2)]
    a_prefix = [table.add(f"A_{i}: ") for i in range(s + 2)]
    vl_current = [table.add(VL_CURRENT_OBSERVATION + x + "\n") for x in ("", INTERSECTION_TEXT)]
    feedback = [table.add(FEEDBACK_PREFIX + m) for m in FEEDBACK_MESSAGES + (BUDGET_EXHAUSTED_MESSAGE,)]
    tokens, lens = table.tokenize(encode)
    action_bytes = np.zeros((len(ACTIONS), 32), np.uint8)
    for i, a in enumerate(ACTIONS):
        action_bytes[i, :len(a)] = np.frombuffer(a.encode(), np.uint8)
    params = VirlParams(
        absolute_action=np.bool_(absolute_action), vision=np.bool_(vision),
        slot_valid=f["valid"], slot_candidate=f["candidate"], slot_draw=f["draw"], slot_pano=f["pano"],
        slot_heading=f["heading"], slot_action_abs=f["abs"], slot_action_rel=f["rel"], slot_obs=f["obs"],
        slot_gt_intersection=f["gti"], slot_sentence=f["sentence"],
        random_heading=np.array([t.random_heading for t in templates]),
        init_heading=np.array([t.init_heading for t in templates], np.int32),
        first_degree=np.array([t.degrees[0] for t in templates], np.int32), instruction_piece=instruction,
        obs_piece=np.array(obs_piece, np.int32),
        obs_intersection=np.array([INTERSECTION_TEXT in o for o in obs_strings.strings]),
        action_piece=np.array(action_piece, np.int32), action_bytes=action_bytes,
        action_len=np.array([len(a) for a in ACTIONS], np.int32), o_prefix=np.array(o_prefix, np.int32),
        a_prefix=np.array(a_prefix, np.int32), segments=np.array(segments, np.int32),
        vl_current=np.array(vl_current, np.int32), feedback_piece=np.array(feedback, np.int32),
        tokens=tokens, token_lens=lens)
    return jax.tree.map(jnp.asarray, params), table.strings


def prompt_length_bound(params: VirlParams) -> int:
    """Host-side upper bound on the prompt length in tokens of any state (choose max_prompt_tokens >= it)."""
    lens = np.asarray(params.token_lens)
    line = (lens[np.asarray(params.o_prefix)].max() + lens[np.asarray(params.obs_piece)].max()
            + lens[np.asarray(params.a_prefix)].max() + lens[np.asarray(params.action_piece)].max())
    current = max(lens[np.asarray(params.obs_piece)].max(), lens[np.asarray(params.vl_current)].max())
    return int(lens[np.asarray(params.segments)].sum() + lens[np.asarray(params.instruction_piece)].max()
               + (params.slot_valid.shape[1] + 1) * line + current)


class VirlEnv:
    """Pure functions over (VirlState, VirlParams) for one episode; jit and vmap them for batches."""

    def __init__(self, config: VirlConfig):
        self.config = config

    def reset(self, key: jax.Array, params: VirlParams, route: jax.Array | int = -1) -> VirlState:
        """New episode on `route` (uniform over routes when negative) with heading and drops drawn from `key`."""
        k_route, k_episode = jax.random.split(key)
        num_routes, num_slots = params.slot_valid.shape
        route = jnp.asarray(route, jnp.int32)
        r = jnp.where(route >= 0, route, jax.random.randint(k_route, (), 0, num_routes, jnp.int32))
        h_draw, draws = episode_randomness(k_episode, max_legs(params))
        heading0 = jnp.where(params.random_heading[r], h_draw, params.init_heading[r])
        first_label = _relative_label_id(params.first_degree[r] - heading0)
        keep = params.slot_valid[r] & (~params.slot_candidate[r]
                                       | (draws.reshape(-1)[params.slot_draw[r]] >= self.config.drop_rate))
        target = jnp.where(keep, jnp.cumsum(keep) - 1, num_slots)

        def compact(x: jax.Array) -> jax.Array:
            """Kept slots of a per-slot array, in order, zero padded to [S]."""
            return jnp.zeros(num_slots, x.dtype).at[target].set(x, mode="drop")

        rel = jnp.where(params.slot_action_rel[r] < 0, REL_BASE + first_label, params.slot_action_rel[r])
        action = jnp.where(params.absolute_action, params.slot_action_abs[r], rel)
        obs = compact(params.slot_obs[r])
        zero = jnp.int32(0)
        return VirlState(
            route=r, heading0=heading0, first_label=first_label, pano=compact(params.slot_pano[r]),
            heading=compact(jnp.where(params.slot_heading[r] < 0, heading0, params.slot_heading[r])),
            action=compact(action), obs=obs, gt_intersection=compact(params.slot_gt_intersection[r]),
            sentence=compact(params.slot_sentence[r]), num_points=keep.sum().astype(jnp.int32), t=zero,
            remaining=jnp.int32(self.config.verify_iter), is_success=jnp.bool_(True), done=jnp.bool_(False),
            hist_obs=jnp.zeros(num_slots + 1, jnp.int32).at[0].set(obs[0]),
            hist_act=jnp.zeros(num_slots + 1, jnp.int32), num_hist=zero, feedback=jnp.int32(NO_FEEDBACK),
            num_steps=zero, num_correct=zero)

    def step(self, state: VirlState, reply: jax.Array, reply_len: jax.Array,
             params: VirlParams) -> tuple[VirlState, StepOut]:
        """Score a reply (uint8[L], int32 length) at the current rail point; a finished episode stays unchanged."""
        active = ~state.done
        t = state.t
        remaining = state.remaining - 1
        exhausted = remaining == -1
        gt = state.action[t]
        is_stop = gt == STOP_ID
        fid = feedback_id(reply, reply_len, params.action_bytes[gt], params.action_len[gt], state.gt_intersection[t])
        correct = ~exhausted & (fid == 0)
        reward = jnp.where(exhausted, -1.0, jnp.asarray(FEEDBACK_REWARDS, jnp.float32)[fid])
        moves = correct & ~is_stop
        advance = moves | (exhausted & ~is_stop)
        new_t = t + advance.astype(jnp.int32)
        terminated = is_stop & (correct | exhausted)
        n = state.num_hist
        new = state._replace(
            t=new_t, remaining=jnp.where(moves, self.config.verify_iter, remaining),
            is_success=state.is_success & ~exhausted, done=terminated | exhausted,
            hist_act=jnp.where(moves, state.hist_act.at[n].set(gt), state.hist_act),
            hist_obs=jnp.where(moves, state.hist_obs.at[n + 1].set(state.obs[new_t]), state.hist_obs),
            num_hist=n + moves.astype(jnp.int32), feedback=jnp.where(exhausted, BUDGET_FEEDBACK, fid),
            num_steps=state.num_steps + 1, num_correct=state.num_correct + correct.astype(jnp.int32))
        new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
        out = StepOut(reward=jnp.where(active, reward, 0.0).astype(jnp.float32), terminated=active & terminated,
                      truncated=active & exhausted, feedback=jnp.where(active, new.feedback, NO_FEEDBACK))
        return new, out

    def prompt_tokens(self, state: VirlState, params: VirlParams) -> tuple[jax.Array, jax.Array]:
        """(int32[max_prompt_tokens] ids padded with pad_id, int32 length) of the Q_VIRL prompt of the state.

        The length is the true prompt length; ids are cut at max_prompt_tokens when it is larger (see
        `prompt_length_bound`)."""
        num_slots = params.slot_valid.shape[1]
        i = jnp.arange(num_slots)
        past = i < state.num_hist
        line_pieces = jnp.stack([params.o_prefix[i + 1], params.obs_piece[state.hist_obs[i]], params.a_prefix[i + 1],
                                 params.action_piece[state.hist_act[i]]], axis=1)
        n = state.num_hist
        cur_obs = state.hist_obs[n]
        current = jnp.where(params.vision, params.vl_current[params.obs_intersection[cur_obs].astype(jnp.int32)],
                            params.obs_piece[cur_obs])
        pieces = jnp.concatenate([
            params.segments[:1], params.instruction_piece[state.route, state.first_label][None], params.segments[1:2],
            line_pieces.reshape(-1),
            jnp.stack([params.o_prefix[n + 1], current, params.a_prefix[n + 1], params.segments[3],
                       params.segments[2]])])
        used = jnp.concatenate([jnp.ones(3, bool), jnp.repeat(past, 4), jnp.ones(5, bool)])
        lens = jnp.where(used, params.token_lens[pieces], 0)
        return assemble(pieces, lens, params.tokens, self.config.max_prompt_tokens, self.config.pad_id)

    def feedback_tokens(self, state: VirlState, params: VirlParams, max_len: int = 128) -> tuple[jax.Array, jax.Array]:
        """Ids of the user turn 'You failed this trial because ' + feedback (valid when feedback is 1-4)."""
        row = params.feedback_piece[jnp.clip(state.feedback, 0, BUDGET_FEEDBACK)]
        return assemble(row[None], params.token_lens[row][None], params.tokens, max_len, self.config.pad_id)

    @staticmethod
    def current_view(state: VirlState) -> tuple[jax.Array, jax.Array]:
        """(pano index, heading in degrees) of the current rail point: the input of the 2x2 view renderer."""
        return state.pano[state.t], state.heading[state.t]

    @staticmethod
    def expert_action(state: VirlState) -> jax.Array:
        """int32 id into ACTIONS of the ground-truth action at the current point."""
        return state.action[state.t]
