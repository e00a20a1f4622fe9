"""Scripted V-IRL policies dressed as a model object, for testing the on-device rollout and evaluator end to end.

`ScriptedVirlModel` offers what a loaded model offers to `evaluation.evaluator.Evaluator` and `rollout.rollout`
(`decoder`, `params`, `mesh_rules`, `put_batch`, `eos_token_ids`, `pad_id`), so replies go through the real sampler,
prompt assembly, token-to-byte conversion, device verifier and env; nothing is patched. Its decoder
(`ScriptedVirlDecoder`) keeps the token id of every KV-cache slot in the cache and, at each step, hands every row's
history to the host (`jax.pure_callback`). The host decodes the conversation up to its last generation prompt, reads
it as a SmolLM2 (ChatML) V-IRL conversation (spec virl.md §1.9: the Q_VIRL_L prompt, then per failed attempt the
reply and 'You failed this trial because ' + the verifier's message), works out the rail point and its ground-truth
action from the prompt text alone (`read_point`), asks the policy for the reply and forces it token by token (then
EOS). A conversation it cannot read gets NOT_UNDERSTOOD and is logged in `ScriptedVirlModel.not_understood`.

V-IRL-VL (`ScriptedVirlModel(..., vision=True)`): the decoder's `image_extra` hands each conversation's rendered
2x2 grids to the host, which logs them (`images`) and tells the destination apart by its view alone: test cities
give every destination a white panorama (`DESTINATION_WHITE`). The Q_VIRL_VL prompt shows every other point the
same way ("You observe an image of 4 views; "), so that is what the oracle reads from the image.

A policy is a function `Query -> reply text`; `REPLIES` are the building blocks (oracle, wrong, malformed, over-long).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.virl.prompts import FEEDBACK_PREFIX, INTERSECTION_TEXT, VL_CURRENT_OBSERVATION, expert_response
from jaxrl_vlm.models.layers import KVCache
from scripted_policy import forced_tokens, token_cache, write_tokens

GEN_PROMPT = "<|im_start|>assistant\n"
NOT_UNDERSTOOD = "I do not know."
START_OBSERVATION = "No landmarks nearby; "  # the oracle text of the start and of interpolated points (spec §1.5)
DESTINATION_WHITE = 0.5  # a grid with more than this share of 255 values shows a (white) destination panorama


class Point(NamedTuple):
    """A rail point as its prompt shows it: t (0-based), the ground-truth action, the oracle observation (the prompt's
    current O line) and the instruction sentence to execute (what ResponseVIRL's "current instruction" holds)."""

    t: int
    action: str
    observation: str
    instruction: str


class Query(NamedTuple):
    """What a policy reads: the batch row, the conversation's prompt (first user content), the point it shows, and
    the earlier replies of this conversation with the feedback (verifier message, prefix removed) each got."""

    row: int
    prompt: str
    point: Point
    replies: tuple[str, ...]
    feedbacks: tuple[str, ...]

    @property
    def attempt(self) -> int:
        return len(self.replies)


Policy = Callable[[Query], str]


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i:text.index(end, i)]


def instruction_text(prompt: str) -> str:
    """The global instruction of a Q_VIRL_L prompt (numbered sentences, each line ending with a newline)."""
    return _between(prompt, "[Instruction]\n", "\n\n[Action space]")


def read_point(prompt: str, destination_in_view: bool = False) -> Point:
    """The rail point a Q_VIRL prompt shows, with its ground-truth action, from the text (spec §1.4-1.5): the
    start and every intersection ask for the next 'Turn ... to face ...' sentence's turn (compass or relative word as
    the action space says), the destination (all turns done, a landmark in view; Q_VIRL_VL: destination_in_view,
    what the image shows) for stop(), other points forward()."""
    sentences = [s for _, s in re.findall(r"^(\d+)\. (.*)$", instruction_text(prompt), re.M)]
    seq = _between(prompt, "[Observations and actions sequence]\n", "\n\n[Output]")
    observations = re.findall(r"^O_\d+: (.*)$", seq, re.M)
    actions = re.findall(r"^A_\d+: (.*)$", seq, re.M)
    if len(observations) != len(actions) or actions[-1] != "" or len(sentences) % 2:
        raise ValueError(f"not a V-IRL prompt sequence: {seq!r}")
    t, observation = len(observations) - 1, observations[-1]
    turns = sum(a.startswith("turn_direction(") for a in actions[:-1])
    absolute = "8 directions" in _between(prompt, "[Action space]\n", "\n\n[Observations")
    if t == 0 or INTERSECTION_TEXT in observation:
        sentence = sentences[2 * turns]
        relative, compass = re.fullmatch(r"(?:First, turn|Turn) (.+) to face (\w+)\.", sentence).groups()
        return Point(t, f"turn_direction({compass if absolute else relative})", observation, sentence)
    at_destination = (destination_in_view if observation.startswith(VL_CURRENT_OBSERVATION)
                      else observation != START_OBSERVATION)
    if turns == len(sentences) // 2 and at_destination:
        return Point(t, "stop()", observation, sentences[-1])
    return Point(t, "forward()", observation, sentences[2 * turns - 1])


def read_conversation(text: str) -> tuple[str, list[str], list[str]] | None:
    """(prompt, replies, feedbacks) of a rendered ChatML V-IRL conversation that ends with the generation prompt,
    or None when the text is not one."""
    messages = []
    for part in text.split("<|im_start|>")[1:]:
        role, _, content = part.partition("\n")
        messages.append((role, content.removesuffix("<|im_end|>\n")))
    if not messages or messages[-1] != ("assistant", ""):
        return None
    messages = [m for m in messages[:-1] if m[0] != "system"]
    if len(messages) % 2 != 1 or messages[0][0] != "user":
        return None
    replies, feedbacks = [], []
    for (role_a, reply), (role_u, user) in zip(messages[1::2], messages[2::2]):
        if role_a != "assistant" or role_u != "user" or not user.startswith(FEEDBACK_PREFIX):
            return None
        replies.append(reply)
        feedbacks.append(user[len(FEEDBACK_PREFIX):])
    return messages[0][1], replies, feedbacks


# --- replies (all ASCII: a cut reply is still valid UTF-8) ---
JUNK = " Let me look at every shop window along this long street before I decide where to go next." * 8


def wrong_action(point: Point) -> str:
    return "forward()" if point.action == "stop()" else "stop()"


def oracle(q: Query) -> str:
    """The expert reply (ResponseVIRL, spec §1.9) with the ground-truth action."""
    return expert_response(q.point.observation, q.point.instruction, q.point.action)


def wrong(q: Query) -> str:
    """ResponseVIRL with the oracle observation and a wrong action (-1.5 where the observation names an
    intersection, else -1: spec §1.6)."""
    return expert_response(q.point.observation, q.point.instruction, wrong_action(q.point))


def not_json(q: Query) -> str:
    """Prose, no action: -1."""
    return "I would walk towards the park and then stop somewhere nice."


def no_action_key(q: Query) -> str:
    """A JSON object without "action" whose observation claims an intersection: -1.5 off intersections."""
    return '{"current observation": "an intersection ahead", "current instruction": "walk"}'


def overlong_action_first(q: Query) -> str:
    """The oracle reply, then far more text than a reply may hold: the cut reply still holds the action."""
    return oracle(q) + JUNK


def overlong_action_late(q: Query) -> str:
    """Far more text than a reply may hold, then the oracle reply: the cut loses the action."""
    return JUNK + oracle(q)


def retry(q: Query) -> str:
    """Wrong at each point's first attempt, right at the second."""
    return wrong(q) if q.attempt == 0 else oracle(q)


def fail_at(t: int) -> Policy:
    """Oracle but both attempts wrong at point t (then the forced failure ends the episode)."""
    return lambda q: wrong(q) if q.point.t == t else oracle(q)


def fail_at_stop(q: Query) -> str:
    """Oracle but both attempts at the final stop() wrong."""
    return wrong(q) if q.point.action == "stop()" else oracle(q)


def per_row(policies: list[Policy]) -> Policy:
    """Row b follows policies[b % len(policies)]."""
    return lambda q: policies[q.row % len(policies)](q)


# --- the model ---
@dataclasses.dataclass(frozen=True, eq=False)
class ScriptedVirlDecoder:
    """A `sampler.DecodeModel` whose cache holds token ids and whose logits force the host's reply (one-hot * 100).
    Hashed by identity: one decoder keeps one set of compiled rollouts for every policy."""

    vocab: int
    host: Any

    def decode_params(self, params):
        return params

    def init_cache(self, batch: int, capacity: int) -> KVCache:
        return token_cache(batch, capacity)

    def image_extra(self, params, images, input_ids):
        """int32[B]: 1 where the row's grid uint8[B, H, W, 3] shows a destination (`ScriptedVirlModel.see`)."""
        del params, input_ids
        return jax.pure_callback(self.host.see, jax.ShapeDtypeStruct((images.shape[0],), jnp.int32), images)

    def step(self, params, input_ids, token_mask, cache, extra):
        del params
        cache, ids = write_tokens(cache, input_ids, token_mask)
        destination = jnp.zeros((input_ids.shape[0],), jnp.int32) if extra is None else extra
        forced = jax.pure_callback(self.host.next_tokens, jax.ShapeDtypeStruct((input_ids.shape[0],), jnp.int32), ids,
                                   destination)
        return jax.nn.one_hot(forced, self.vocab, dtype=jnp.float32) * 100.0, cache


class ScriptedVirlModel:
    """A model object answering V-IRL conversations with `self.policy` (set it with `reset`). See the module docstring.

    asked: one Query per reply the model started (at the first token of each reply: batch by batch, conversation by
    conversation, row by row; padding rows included). not_understood: the conversation texts it could not read.
    images (vision): the grids uint8[B, H, W, 3] of every conversation round, in order.
    """

    mesh_rules = None

    def __init__(self, tokenizer, vision: bool = False):
        self.tokenizer = tokenizer
        self.vision = vision
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.policy: Policy | None = None
        self.asked: list[Query] = []
        self.not_understood: list[str] = []
        self.images: list[np.ndarray] = []
        self.params = jnp.zeros((), jnp.float32)
        self.decoder = ScriptedVirlDecoder(len(tokenizer), self)
        self._gen_prompt = np.asarray(tokenizer(GEN_PROMPT, add_special_tokens=False)["input_ids"])
        self._replies: dict[tuple[tuple[int, int], bytes], tuple[list[int], Query | None]] = {}

    def reset(self, policy: Policy) -> "ScriptedVirlModel":
        self.policy, self.asked, self.not_understood, self.images, self._replies = policy, [], [], [], {}
        return self

    def see(self, images) -> np.ndarray:
        """Log a round's grids; int32[B] 1 where one shows a destination (mostly white)."""
        assert self.vision, "a V-IRL-L scripted model was shown images"
        images = np.array(images)
        self.images.append(images)
        return ((images == 255).mean(axis=(1, 2, 3)) > DESTINATION_WHITE).astype(np.int32)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (self.eos,)

    @property
    def pad_id(self) -> int:
        return 0

    def put_batch(self, x):
        return jnp.asarray(np.asarray(x))

    def next_tokens(self, ids: np.ndarray, destination: np.ndarray) -> np.ndarray:
        """The forced token of each row: the next token of its reply to the conversation it holds (then EOS);
        destination int32[B]: its image shows the destination (V-IRL-VL)."""
        ids, destination = np.asarray(ids), np.asarray(destination)
        out, started = forced_tokens(ids, self._gen_prompt, self.eos, self._replies,
                                     [(b, int(d)) for b, d in enumerate(destination)],
                                     lambda b, prompt: self._answer(b, prompt, bool(destination[b])))
        self.asked += [query for _, query in started if query is not None]  # once per reply (none is empty)
        return out

    def _answer(self, row: int, prompt_ids: np.ndarray, destination: bool) -> tuple[list[int], Query | None]:
        text = self.tokenizer.decode(prompt_ids.tolist(), clean_up_tokenization_spaces=False)
        conv = read_conversation(text)
        try:
            query = None if conv is None else Query(row, conv[0], read_point(conv[0], destination), tuple(conv[1]),
                                                    tuple(conv[2]))
        except (ValueError, AttributeError, IndexError):
            query = None
        if query is None:
            self.not_understood.append(text)
        reply = NOT_UNDERSTOOD if query is None else self.policy(query)
        return self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.eos], query
