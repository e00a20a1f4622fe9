"""Scripted GeneralPoints policies dressed as a model object, for testing the evaluation numbers end to end.

`ScriptedPolicyModel` offers what a loaded model offers to the evaluator (`evaluation.evaluator.Evaluator`) and the
on-device rollout (`jaxrl_vlm.rollout`): `decoder` (for GP-VL with `image_extra`), `params`, `mesh_rules`,
`put_batch`, `eos_token_ids`, `pad_id`. So it goes through the real rollout, image rendering, sampler, prompt
assembly, token-to-byte conversion and device verifier; nothing of the evaluator is patched.

The rollout prefills a conversation's prompt once and then continues the KV cache: each decoder step is given only
the new tokens (a prompt, one sampled token, or a revision chunk: the pending reply token and the feedback turn).
So the decoder (`ScriptedDecoder`) keeps the token id of each KV-cache slot in the cache (`token_cache`,
`write_tokens`) and, at every step, hands each row's whole history, the valid slots in order, to the host
(`jax.pure_callback`). The host decodes the conversation up to its last generation prompt, reads the hand from it
(GP-L: the `Cards: [...]` line; GP-VL: the card images the rollout rendered, recognised exactly against the card
atlas by `image_extra`, the model's "vision encoder", on the host), reads the face rule from the prompt text and the
earlier replies and their feedback from the revision turns, asks the Python policy which kind of reply to give, and
forces that reply token by token (then EOS), each token at its offset from the generation prompt (`forced_tokens`,
shared with the V-IRL scripted model).

A policy is a function `Conversation -> kind`, kind one of `REPLY_REWARDS`, whose reward the spec's table fixes
(spec generalpoints.md §4): so a test knows each reply's reward from the policy's definition alone.
Every first-turn prompt the model answers is logged (`ScriptedPolicyModel.seen`) with the hand it saw.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.general_points import prompts, verifier
from jaxrl_vlm.envs.general_points.card_art import CARD_HEIGHT, CARD_WIDTH
from jaxrl_vlm.envs.general_points.cards import CANVAS_SIZE, CARD_XS, CARD_Y, card_atlas
from jaxrl_vlm.envs.general_points.solver import solutions
from jaxrl_vlm.models.layers import KVCache
IMAGE_PLACEHOLDER = "<|image|>"
GEN_PROMPT = "<|im_start|>assistant\n"

# Reply kinds and their reward under GP-VL (spec §4 table). Under GP-L the cards are not checked, so "misread" is a
# correct reply there. "memorised" answers with J/Q/K as 10 whatever the prompt says: 5 under the face-10 rule; under
# the 11/12/13 rule it uses a 10 the hand lacks (or holds fewer times) and leaves a face value unused, -2 each
# (spec §4.5), so -4 on every rule-OOD hand (each has a face card, spec §1).
REPLY_REWARDS = {"correct": 5.0, "no_solution": -1.0, "misread": -1.5, "wrong_numbers": -2.0, "illegal": -3.0}
MEMORISED_OOD_REWARD = -4.0


class Conversation(NamedTuple):
    """What the policy reads: the hand (ranks 1..13; suits indexing SUITS for GP-VL, else None), the face rule the
    prompt states, and the earlier replies with the verifier feedback each got (revision turns)."""

    ranks: tuple[int, ...]
    suits: tuple[int, ...] | None
    face_cards_as_10: bool
    replies: tuple[str, ...]
    feedbacks: tuple[str, ...]

    @property
    def turn(self) -> int:
        return len(self.replies)


Policy = Callable[[Conversation], str]


def wrong_formula(numbers: list[int], target: int = 24) -> str:
    """A complete formula using each number once whose value is not the target."""
    for op in "+*-":
        formula = op.join(str(n) for n in numbers)
        if eval(formula) != target:  # integer arithmetic only: exact
            return formula
    raise AssertionError(f"no wrong formula for {numbers}")


def scripted_reply(kind: str, ranks, face_cards_as_10: bool) -> str:
    """The reply text of a kind for a hand, in the expert reply format (spec §3)."""
    ranks = [int(r) for r in ranks]
    numbers = prompts.card_numbers(ranks, face_cards_as_10)
    if kind == "memorised":  # what it learnt: J/Q/K are 10 (a hand unsolvable that way still gets a formula)
        as_10 = prompts.card_numbers(ranks, True)
        formula = (solutions(as_10) or [wrong_formula(as_10)])[0]
        return prompts.expert_response(ranks, formula, face_cards_as_10=True)
    formula = {"correct": lambda: solutions(numbers)[0], "misread": lambda: solutions(numbers)[0],
               "no_solution": lambda: wrong_formula(numbers),
               "wrong_numbers": lambda: "+".join(map(str, numbers)) + "+99",  # all numbers once, plus one not held
               "illegal": lambda: "twenty four"}[kind]()
    reply = prompts.expert_response(ranks, formula, face_cards_as_10=face_cards_as_10)
    if kind == "misread":  # the first card read as the next rank
        wrong = [ranks[0] % 13 + 1] + ranks[1:]
        reply = reply.replace(repr(prompts.card_names(ranks)), repr(prompts.card_names(wrong)), 1)
    return reply


def forced_tokens(ids: np.ndarray, gen_prompt: np.ndarray, eos: int, replies: dict, keys: list,
                  answer: Callable[[int, np.ndarray], tuple[list[int], Any]]) -> tuple[np.ndarray, list]:
    """The next forced token of each row of a scripted model, and the rows starting a reply.

    ids int32[B, S]: each row's history (-1 where a slot is not valid). A row's reply answers its conversation up to
    its last generation prompt (`gen_prompt` ids): answer(row, prompt ids) -> (reply ids ending with EOS, info),
    cached in `replies` under (keys[row], prompt bytes); the forced token is the reply's token at the row's offset
    from that prompt, EOS past it or without a prompt. Returns (int32[B], [(row, info) of rows whose prompt was
    just written: each reply's first token])."""
    p = len(gen_prompt)
    out = np.full((ids.shape[0],), eos, np.int32)
    started = []
    for b in range(ids.shape[0]):
        history = ids[b][ids[b] >= 0]
        starts = np.flatnonzero(history[:max(len(history) - p + 1, 0)] == gen_prompt[0])
        hits = [s for s in starts if (history[s:s + p] == gen_prompt).all()]
        if not hits:
            continue
        cut = hits[-1] + p
        key = (keys[b], history[:cut].tobytes())
        if key not in replies:
            replies[key] = answer(b, history[:cut])
        reply, info = replies[key]
        done = len(history) - cut
        if done == 0:
            started.append((b, info))
        if done < len(reply):
            out[b] = reply[done]
    return out, started


def token_cache(batch: int, capacity: int) -> KVCache:
    """A `KVCache` that stores the token id written to each slot (in k[0, b, slot, 0, 0]) instead of keys/values."""
    return KVCache(k=jnp.zeros((1, batch, capacity, 1, 1), jnp.int32), v=jnp.zeros((1, batch, capacity, 1, 1)),
                   valid=jnp.zeros((batch, capacity), bool), next_pos=jnp.zeros((batch,), jnp.int32),
                   index=jnp.zeros((), jnp.int32))


def write_tokens(cache: KVCache, input_ids: jax.Array, token_mask: jax.Array) -> tuple[KVCache, jax.Array]:
    """Append a chunk int32[B, T] to a `token_cache` as a decoder step does; returns the cache and every slot's id
    int32[B, S] (-1 where the slot is not valid)."""
    k = jax.lax.dynamic_update_slice(cache.k, input_ids[None, :, :, None, None].astype(jnp.int32),
                                     (0, 0, cache.index, 0, 0))
    valid = jax.lax.dynamic_update_slice(cache.valid, token_mask.astype(bool), (0, cache.index))
    cache = KVCache(k, cache.v, valid, cache.next_pos + token_mask.sum(1, dtype=jnp.int32),
                    cache.index + input_ids.shape[1])
    return cache, jnp.where(valid, k[0, :, :, 0, 0], -1)


@dataclasses.dataclass(frozen=True, eq=False)
class ScriptedDecoder:
    """A `sampler.DecodeModel` whose cache holds token ids (cache.k[0, b, slot]) and whose logits force the host's
    reply (one-hot * 100). `extra`: int32[B, 4, 2] recognised (suit, rank) per card (GP-VL) or None (GP-L).
    Hashed by identity, so one decoder keeps one set of compiled functions for every policy."""

    vocab: int
    host: Any

    def image_extra(self, params, images, input_ids):
        """The cards recognised in each row's image uint8[B, H, W, 3], int32[B, 4, 2] (on the host)."""
        del params, input_ids
        return jax.pure_callback(self.host.recognise, jax.ShapeDtypeStruct((images.shape[0], 4, 2), jnp.int32),
                                 images)

    def decode_params(self, params):
        return params

    def init_cache(self, batch: int, capacity: int) -> KVCache:
        return token_cache(batch, capacity)

    def step(self, params, input_ids, token_mask, cache, extra):
        del params
        batch = input_ids.shape[0]
        cache, ids = write_tokens(cache, input_ids, token_mask)
        cards = jnp.full((batch, 4, 2), -1, jnp.int32) if extra is None else extra
        forced = jax.pure_callback(self.host.next_tokens, jax.ShapeDtypeStruct((batch,), jnp.int32), ids, cards)
        return jax.nn.one_hot(forced, self.vocab, dtype=jnp.float32) * 100.0, cache


class ScriptedPolicyModel:
    """A model object answering GP prompts with `self.policy` (set it per test). See the module docstring.

    seen: one entry per first-turn prompt answered (batch by batch, row by row, padding rows included):
    (ranks, suits or None, face_cards_as_10). turns_asked: the turn of every prompt answered (None: not understood).
    """

    def __init__(self, tokenizer, *, vision: bool):
        self.tokenizer = tokenizer
        self.vision = vision
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.policy: Policy | None = None
        self.seen: list[tuple[tuple[int, ...], tuple[int, ...] | None, bool]] = []
        self.turns_asked: list[int | None] = []
        self.params = jnp.zeros((), jnp.float32)
        self.decoder = ScriptedDecoder(len(tokenizer), self)
        self._gen_prompt = np.asarray(tokenizer(GEN_PROMPT, add_special_tokens=False)["input_ids"])
        self._replies: dict[tuple[bytes, bytes], tuple[list[int], Conversation | None]] = {}
        if vision:
            atlas = card_atlas()
            self._tiles = {atlas[s, r - 1].tobytes(): (s, r) for s in range(atlas.shape[0]) for r in range(1, 14)}
            assert len(self._tiles) == atlas.shape[0] * 13, "card tiles are not all distinct"

    def reset(self, policy: Policy) -> "ScriptedPolicyModel":
        self.policy = policy
        self.seen, self.turns_asked = [], []
        self._replies = {}
        return self

    # --- the model interface the evaluator uses ---
    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (self.eos,)

    @property
    def pad_id(self) -> int:
        return 0

    mesh_rules = None  # one device: no batch padding for a mesh

    def put_batch(self, x):
        return jnp.asarray(np.asarray(x))

    def recognise(self, images) -> np.ndarray:
        """The recognised cards of each image uint8[B, H, W, 3], int32[B, 4, 2] of (suit, rank), -1 where a card is
        not an exact atlas tile."""
        assert self.vision, "a text-only scripted model was shown images"
        pixels = np.asarray(images)
        assert pixels.shape[1:] == (CANVAS_SIZE, CANVAS_SIZE, 3), pixels.shape
        cards = np.full((pixels.shape[0], 4, 2), -1, np.int32)
        for b, image in enumerate(pixels):
            for i, x in enumerate(CARD_XS):
                tile = np.ascontiguousarray(image[CARD_Y:CARD_Y + CARD_HEIGHT, x:x + CARD_WIDTH])
                cards[b, i] = self._tiles.get(tile.tobytes(), (-1, -1))
        return cards

    # --- the host side of the decoder ---
    def next_tokens(self, ids: np.ndarray, cards: np.ndarray) -> np.ndarray:
        """The forced token of each row: the next token of its scripted reply (then EOS)."""
        ids, cards = np.asarray(ids), np.asarray(cards)  # the callback may get jax arrays: no eager jax ops here
        out, started = forced_tokens(ids, self._gen_prompt, self.eos, self._replies,
                                     [card.tobytes() for card in cards],
                                     lambda b, prompt: self._answer(prompt, cards[b]))
        for _, conv in started:  # the prompt's prefill: once per row and turn (identical hands in a batch each count)
            self.turns_asked.append(None if conv is None else conv.turn)
            if conv is not None and conv.turn == 0:
                self.seen.append((conv.ranks, conv.suits, conv.face_cards_as_10))
        return out

    def _answer(self, prompt_ids: np.ndarray, cards: np.ndarray) -> tuple[list[int], Conversation | None]:
        conv = self._read(self.tokenizer.decode(prompt_ids.tolist(), clean_up_tokenization_spaces=False), cards)
        if conv is None:  # not a GP conversation this policy understands: say nothing useful
            return self.tokenizer("I do not know.", add_special_tokens=False)["input_ids"] + [self.eos], None
        text = scripted_reply(self.policy(conv), conv.ranks, conv.face_cards_as_10)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos], conv

    def _read(self, text: str, cards: np.ndarray) -> Conversation | None:
        """The conversation a GP chat text holds, or None when it is not one (unreadable cards, wrong prompt)."""
        parts = text.split("<|im_start|>")[1:]
        messages = []
        for part in parts:
            role, _, content = part.partition("\n")
            messages.append((role, content.removesuffix("<|im_end|>\n")))
        if not messages or messages[-1] != ("assistant", ""):
            return None
        messages = [m for m in messages[:-1] if m[0] != "system"]
        if not messages or messages[0][0] != "user":
            return None
        first = messages[0][1]
        face10 = prompts.FACE_CARD_MSG_OOD not in first
        if self.vision:
            if (cards < 0).any() or not first.startswith(IMAGE_PLACEHOLDER):
                return None
            ranks, suits = tuple(int(r) for r in cards[:, 1]), tuple(int(s) for s in cards[:, 0])
            first = first[len(IMAGE_PLACEHOLDER):]
        else:
            line = [ln for ln in first.splitlines() if ln.startswith("Cards: ")]
            if len(line) != 1:
                return None
            names = line[0][len("Cards: "):].strip("[]").replace("'", "").split(", ")
            if len(names) != 4 or not set(names) <= set(prompts.RANK_NAMES):
                return None
            ranks, suits = tuple(prompts.RANK_NAMES.index(n) + 1 for n in names), None
        # a model trained on the protocol prompt: anything else is not understood
        if first != prompts.user_message(ranks, face_cards_as_10=face10, language_only=not self.vision):
            return None
        replies, feedbacks = [], []
        for (role_a, reply), (role_u, user) in zip(messages[1::2], messages[2::2]):
            if role_a != "assistant" or role_u != "user" or not user.startswith(prompts.FEEDBACK_PREFIX):
                return None
            replies.append(reply)
            feedbacks.append(user[len(prompts.FEEDBACK_PREFIX):])
        if len(messages) % 2 != 1:
            return None
        return Conversation(ranks, suits, face10, tuple(replies), tuple(feedbacks))


def host_feedback(reply: str, conv: Conversation, language_only: bool) -> str:
    """The host verifier's feedback on a reply to this conversation's hand (what a revision turn must show)."""
    return verifier.score_response(reply, list(conv.ranks), face_cards_as_10=conv.face_cards_as_10,
                                   language_only=language_only)[1]
