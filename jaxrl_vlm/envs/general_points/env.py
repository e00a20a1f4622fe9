"""The GeneralPoints environment in JAX, gymnax style (spec generalpoints.md §1, §4.8).

`reset(key, params) -> (obs, state)` and `step(state, reply, reply_len, params) -> (obs, state, reward, done, info)`
are pure, jittable and vmappable functions of ONE environment; batch them with `jax.vmap` (see `reset_batch` and
`step_batch`). An action is the model's reply as UTF-8 bytes (uint8[L], zero-padded, with its byte count; token ids
become bytes on the device with `token_bytes.tokens_to_bytes`). Jit with the state donated, e.g.
`jax.jit(step_batch, donate_argnums=0)`; one compilation serves every step of every episode.

`EnvParams` splits static configuration from dynamic parameters: fields that change shapes or host-built tables
(target, face rule, OOD sampling, suit set, GP-L/GP-VL, image resolution) are static pytree metadata, so changing
them retraces; `verify_iter` and the device solution table are pytree leaves, so the same compiled step serves any
budget. Build params with `make_params`, which validates every field.

Episode semantics (spec §4.8): each step scores the reply with the device verifier (`verifier_device.score_bytes`);
reward 5 ends the episode (success). After `verify_iter` evaluated replies without success, the next step does not
evaluate its reply: it returns -1 with feedback `step_limit_reached` and ends the episode (truncated). Stepping an
ended episode is a no-op (reward 0, done True, feedback empty); there is no auto-reset, the caller resets.

Observation: the hand (ranks 1..13, suits indexing `sampling.SUITS`) and the turn index. The rollout turns it into
model inputs on the device: `prompt_tokens.prompt_ids` for the first turn, `prompt_tokens.append_revision` with
`info['fragments']` for revision turns, and the `cards.py` renderer for GP-VL images at `params.resolution`.
Fragment ids index `feedback_fragment_texts()` (the verifier's fragments plus `step_limit_reached`).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl_vlm.envs.general_points import verifier_device
from jaxrl_vlm.envs.general_points.sampling import SUIT_SETS, rank_tuple_weights, sample_hands
from jaxrl_vlm.envs.general_points.verifier import STEP_LIMIT_FEEDBACK, STEP_LIMIT_REWARD

CANVAS_SIZE = 1200
CARD_GAP = 27  # px between neighbouring cards on the 1200 canvas (270*1.1 - 270), the layout's narrowest gap
MIN_RESOLUTION = -(-2 * CANVAS_SIZE // CARD_GAP)  # 89: the card gap keeps at least 2 px after scaling
_STEP_LIMIT_BYTES = tuple(STEP_LIMIT_FEEDBACK.encode("ascii"))
STEP_LIMIT_FRAGMENT = len(verifier_device.feedback_fragment_texts())


def feedback_fragment_texts() -> list[str]:
    """Texts of the fragment ids in `info['fragments']`: the verifier's, then `step_limit_reached`."""
    return verifier_device.feedback_fragment_texts() + [STEP_LIMIT_FEEDBACK]


@struct.dataclass
class EnvParams:
    """GeneralPoints parameters. Static: target, face_cards_as_10, ood, suits, language_only, resolution.
    Dynamic: verify_iter int32[] (evaluated replies per episode) and table (device solution table for target)."""

    verify_iter: jax.Array
    table: verifier_device.DeviceSolutionTable
    target: int = struct.field(pytree_node=False, default=24)
    face_cards_as_10: bool = struct.field(pytree_node=False, default=True)
    ood: bool = struct.field(pytree_node=False, default=False)
    suits: str = struct.field(pytree_node=False, default="mixed")
    language_only: bool = struct.field(pytree_node=False, default=True)
    resolution: int = struct.field(pytree_node=False, default=CANVAS_SIZE)


def _require_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"EnvParams.{name} must be a bool, got {value!r}")
    return value


def _require_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"EnvParams.{name} must be an int, got {value!r}")
    return value


def make_params(
    *,
    target: int = 24,
    face_cards_as_10: bool = True,
    ood: bool = False,
    suits: str = "mixed",
    verify_iter: int = 5,
    language_only: bool = True,
    resolution: int = CANVAS_SIZE,
) -> EnvParams:
    """Validated `EnvParams`. Defaults: the GP-L in-distribution split (target 24, face cards 10, mixed suits, 5
    verification iterations). Raises TypeError/ValueError naming the offending field."""
    target = _require_int("target", target)
    _require_bool("face_cards_as_10", face_cards_as_10)
    _require_bool("ood", ood)
    _require_bool("language_only", language_only)
    if suits not in SUIT_SETS:
        raise ValueError(f"EnvParams.suits must be one of {sorted(SUIT_SETS)}, got {suits!r}")
    if _require_int("verify_iter", verify_iter) < 1:
        raise ValueError(f"EnvParams.verify_iter must be >= 1, got {verify_iter}")
    if _require_int("resolution", resolution) < MIN_RESOLUTION:
        raise ValueError(f"EnvParams.resolution {resolution} is too small for the {CANVAS_SIZE}px card layout "
                         f"(its {CARD_GAP}px card gap needs resolution >= {MIN_RESOLUTION})")
    if not -(2**20) <= target <= 2**20:
        raise ValueError(f"EnvParams.target {target} is outside the supported range [-2**20, 2**20]")
    try:
        rank_tuple_weights(face_cards_as_10, ood, target)
    except ValueError as err:
        raise ValueError(f"EnvParams.target {target}: {err}") from err
    return EnvParams(
        verify_iter=jnp.asarray(verify_iter, jnp.int32), table=verifier_device.device_solution_table(target),
        target=target, face_cards_as_10=face_cards_as_10, ood=ood, suits=suits, language_only=language_only,
        resolution=resolution,
    )


class Observation(NamedTuple):
    """ranks int32[4] in 1..13; suits int32[4] indexing SUITS; turn int32[] (replies submitted so far)."""

    ranks: jax.Array
    suits: jax.Array
    turn: jax.Array


@struct.dataclass
class EnvState:
    """ranks/suits int32[4]; remaining int32[] (evaluations left); turn int32[]; done, success, truncated bool[]."""

    ranks: jax.Array
    suits: jax.Array
    remaining: jax.Array
    turn: jax.Array
    done: jax.Array
    success: jax.Array
    truncated: jax.Array


def _observe(state: EnvState) -> Observation:
    return Observation(state.ranks, state.suits, state.turn)


@functools.lru_cache(maxsize=None)
def _reply_scorer(face_cards_as_10: bool, language_only: bool):
    """score_bytes for one reply, whose vmap rule scores the whole batch in one `score_bytes` call (the verifier is
    written batched; letting vmap batch its internals instead doubles its run time)."""

    @jax.custom_batching.custom_vmap
    def score_one(reply, reply_len, ranks, table):
        out = verifier_device.score_bytes(reply[None], reply_len[None], ranks[None], face_cards_as_10, language_only,
                                          table)
        return jax.tree.map(lambda x: x[0], out)

    @score_one.def_vmap
    def score_batch(axis_size, in_batched, reply, reply_len, ranks, table):
        reply_b, len_b, ranks_b, table_b = in_batched
        if any(jax.tree.leaves(table_b)):
            raise ValueError("vmap over EnvParams.table is not supported: map params with in_axes=None")
        reply = reply if reply_b else jnp.broadcast_to(reply, (axis_size, *reply.shape))
        reply_len = reply_len if len_b else jnp.broadcast_to(reply_len, (axis_size,))
        ranks = ranks if ranks_b else jnp.broadcast_to(ranks, (axis_size, *ranks.shape))
        out = verifier_device.score_bytes(reply, reply_len, ranks, face_cards_as_10, language_only, table)
        return out, jax.tree.map(lambda _: True, out)

    return score_one


def reset(key: jax.Array, params: EnvParams) -> tuple[Observation, EnvState]:
    """Draw one solvable hand exactly from the spec §1 distribution; full verification budget."""
    ranks, suits = sample_hands(key, 1, face_cards_as_10=params.face_cards_as_10, ood=params.ood,
                                suits=params.suits, target=params.target)
    false = jnp.zeros((), bool)
    state = EnvState(ranks=ranks[0], suits=suits[0], remaining=params.verify_iter, turn=jnp.zeros((), jnp.int32),
                     done=false, success=false, truncated=false)
    return _observe(state), state


def step(
    state: EnvState, reply: jax.Array, reply_len: jax.Array, params: EnvParams
) -> tuple[Observation, EnvState, jax.Array, jax.Array, dict]:
    """Score one reply (uint8[L], L >= 16; reply_len int32[]) and advance the episode.

    Returns (obs, state, reward float32[], done bool[], info) with info: reward, feedback uint8[F], feedback_len
    int32[], fragments int32[K] and num_fragments int32[] (ids into `feedback_fragment_texts()`), success and
    truncated bool[]. F and K are the verifier's feedback and fragment widths for replies of L bytes.
    """
    score = _reply_scorer(params.face_cards_as_10, params.language_only)
    out = score(reply, jnp.asarray(reply_len, jnp.int32), state.ranks, params.table)
    active = ~state.done
    limit = active & (state.remaining <= 0)
    evaluated = active & ~limit
    success = evaluated & out.is_correct
    reward = jnp.where(evaluated, out.reward, jnp.where(limit, STEP_LIMIT_REWARD, 0.0)).astype(jnp.float32)

    f_width = out.feedback.shape[0]
    limit_bytes = jnp.zeros((f_width,), jnp.uint8).at[: len(_STEP_LIMIT_BYTES)].set(
        jnp.asarray(_STEP_LIMIT_BYTES, jnp.uint8))
    feedback = jnp.where(evaluated, out.feedback, jnp.where(limit, limit_bytes, 0))
    feedback_len = jnp.where(evaluated, out.feedback_len, jnp.where(limit, len(_STEP_LIMIT_BYTES), 0))
    limit_frags = jnp.zeros_like(out.fragments).at[0].set(STEP_LIMIT_FRAGMENT)
    fragments = jnp.where(evaluated, out.fragments, jnp.where(limit, limit_frags, 0))
    num_fragments = jnp.where(evaluated, out.num_fragments, jnp.where(limit, 1, 0))

    done = state.done | success | limit
    new_state = state.replace(
        remaining=state.remaining - evaluated.astype(jnp.int32),
        turn=state.turn + active.astype(jnp.int32),
        done=done,
        success=state.success | success,
        truncated=state.truncated | limit,
    )
    info = {"reward": reward, "feedback": feedback, "feedback_len": feedback_len.astype(jnp.int32),
            "fragments": fragments, "num_fragments": num_fragments.astype(jnp.int32), "success": new_state.success,
            "truncated": new_state.truncated}
    return _observe(new_state), new_state, reward, done, info


def reset_batch(key: jax.Array, params: EnvParams, num_envs: int) -> tuple[Observation, EnvState]:
    """`reset` for num_envs environments (independent keys): leaves gain a leading [num_envs] axis."""
    return jax.vmap(reset, in_axes=(0, None))(jax.random.split(key, num_envs), params)


def step_batch(state: EnvState, reply: jax.Array, reply_len: jax.Array, params: EnvParams):
    """`step` vmapped over a batch: reply uint8[B, L], reply_len int32[B], state leaves with a leading [B] axis."""
    return jax.vmap(step, in_axes=(0, 0, 0, None))(state, reply, reply_len, params)
