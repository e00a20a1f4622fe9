"""One environment protocol for verifier-driven conversation tasks (GeneralPoints, V-IRL, ...), gymnax style.

A task is a static `Environment` object (shapes and settings, hashable, a jit static argument) and a params pytree
(device arrays: token tables, route tables, solution tables; the split's settings). All methods are pure, jittable
functions of ONE episode; `reset_batch` / `step_batch` / `prompt_batch` vmap them.

An episode is a sequence of conversations. A conversation opens with `prompt(state, params)` (token ids of the chat
template's head, the task's user message and the generation prompt) and holds up to `turns` model replies. After each
reply, `step(state, reply_bytes, reply_len, params)` scores it and says what comes next:
- `done`: the episode is over (success, failure, or budget);
- `fresh`: the next reply belongs to a new conversation, opened with `prompt(state)` of the new state (V-IRL starts a
  fresh conversation at every route point, spec virl.md §1.9);
- otherwise the conversation continues: `feedback_ids` are the tokens that follow the reply (the template's end of
  the assistant turn, the user turn 'You failed this trial because ...', the generation prompt).
A conversation that used its `turns` replies without `done` or `fresh` ends with one more `step` call whose reply is
not generated (empty): the task's forced failure after the budget (GP `step_limit_reached`, V-IRL §1.6). Its reward
is not a transition of any reply; its counts (below) are counted.

`Step.counts` are per-step (hit, trial) booleans of the task's evaluation rates, summed over every `step` call of an
episode (e.g. V-IRL per-step accuracy: hit = correct action, trial = every call, retries and forced failures
included). `Environment.count_names` maps each rate to the name of its trial count in results.

`Step.outcome` is the verifier's verdict on the reply, an index into `Environment.outcome_names` (GP: correct,
partial, wrong value, wrong numbers, illegal formula, misread cards; V-IRL: correct, wrong action, wrong
observation), -1 for the forced step and ended episodes: the distribution over replies shows what a policy does
wrong even where success is near zero (e.g. J/Q/K still read as 10 under the 11/12/13 rule).
"""
from __future__ import annotations

import abc
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Prompt(NamedTuple):
    """A conversation's opening: ids int32[P] right-padded, length int32[], overflow bool[] (cut at P)."""

    ids: jax.Array
    length: jax.Array
    overflow: jax.Array


class Step(NamedTuple):
    """What one `step` returns besides the state.

    reward float32[]; done bool[] (episode over); success bool[] (the episode has succeeded); fresh bool[] (the
    next reply opens a new conversation); feedback_ids int32[F] right-padded with feedback_len int32[] (valid when
    the conversation continues), feedback_overflow bool[] (the feedback did not fit F); counts: {rate name:
    (hit bool[], trial bool[])}; outcome int32[]: the reply's verdict in `Environment.outcome_names` (-1: none).
    """

    reward: jax.Array
    done: jax.Array
    success: jax.Array
    fresh: jax.Array
    feedback_ids: jax.Array
    feedback_len: jax.Array
    feedback_overflow: jax.Array
    counts: dict[str, tuple[jax.Array, jax.Array]]
    outcome: jax.Array


class Environment(abc.ABC):
    """Static description of a task split; subclasses implement the pure per-episode methods.

    Attributes: prompt_width P and feedback_width F (token widths of `Prompt.ids` / `Step.feedback_ids`), turns
    (replies per conversation), conversations (most conversations an episode can hold), vision (the model also sees
    `image(state, params)`), count_names ({rate name: trial-count name}), ordered_episodes (None: episodes are drawn
    at random; an int: the split is a fixed list of that many episodes, reset by index, e.g. V-IRL's 18 visual-OOD
    routes), action_key (the text after which a reply's action part starts, for PPO's thought/action split of the
    reply log-prob, training.md §4.4; None: the action part is the reply's last tokens), trims_replies (the chat
    template of the task's conversations trims assistant contents, e.g. Llama 3's `| trim`: a re-rendered
    conversation shows earlier replies trimmed, `rollout`'s trim), outcome_names (the verdicts of
    `Step.outcome`), max_reply_bytes (the most reply bytes `step` reads: the rollout cuts longer replies there, so
    replies of many long tokens fit the verifier; None: all of them).
    """

    prompt_width: int
    feedback_width: int
    turns: int
    conversations: int
    vision: bool = False
    count_names: dict[str, str] = {}
    ordered_episodes: int | None = None
    action_key: str | None = None
    trims_replies: bool = False
    outcome_names: tuple[str, ...] = ()
    max_reply_bytes: int | None = None

    def static_key(self) -> tuple:
        """Everything that, besides the params' pytree structure and shapes, decides what the methods trace: equal
        keys share jit compilations (e.g. an evaluation split and the training split with the same settings)."""
        return (id(self),)

    def __hash__(self) -> int:
        return hash((type(self), self.static_key()))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.static_key() == other.static_key()

    @abc.abstractmethod
    def reset(self, key: jax.Array, params: Any, index: jax.Array) -> Any:
        """A fresh episode state (index int32[]: the episode's number in an ordered split, else ignored)."""

    @abc.abstractmethod
    def step(self, state: Any, reply: jax.Array, reply_len: jax.Array, params: Any) -> tuple[Any, Step]:
        """Score a reply (uint8[L] UTF-8 bytes, reply_len int32[]) and advance; an ended episode is unchanged
        (reward 0, no counts)."""

    @abc.abstractmethod
    def prompt(self, state: Any, params: Any) -> Prompt:
        """The opening of a new conversation at the current state."""

    def image(self, state: Any, params: Any) -> jax.Array:
        """uint8[H, W, 3]: what the model sees with the current conversation (vision tasks)."""
        raise NotImplementedError(f"{type(self).__name__} has no images")


def reset_batch(env: Environment, key: jax.Array, params: Any, num_envs: int, first_index: jax.Array | int = 0):
    """`reset` of num_envs episodes (independent keys; indices first_index + arange): leaves gain a leading axis."""
    index = jnp.asarray(first_index, jnp.int32) + jnp.arange(num_envs, dtype=jnp.int32)
    return jax.vmap(env.reset, in_axes=(0, None, 0))(jax.random.split(key, num_envs), params, index)


def step_batch(env: Environment, state: Any, reply: jax.Array, reply_len: jax.Array, params: Any):
    """`step` over a batch: reply uint8[B, L], reply_len int32[B], state leaves [B, ...]."""
    return jax.vmap(env.step, in_axes=(0, 0, 0, None))(state, reply, reply_len, params)


def prompt_batch(env: Environment, state: Any, params: Any) -> Prompt:
    """`prompt` over a batch of states: Prompt with leaves [B, ...]."""
    return jax.vmap(env.prompt, in_axes=(0, None))(state, params)


def image_batch(env: Environment, state: Any, params: Any, chunk: int | None = None) -> jax.Array:
    """`image` over a batch of states: uint8[B, H, W, 3]; chunk: render that many at a time (`lax.map`), which
    bounds a renderer's temporaries (V-IRL's views hold int32 copies of every view), else all at once."""
    if chunk is None:
        return jax.vmap(env.image, in_axes=(0, None))(state, params)
    return jax.lax.map(lambda s: env.image(s, params), state, batch_size=chunk)
