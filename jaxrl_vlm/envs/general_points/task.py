"""GeneralPoints behind the environment protocol (`envs.protocol`): one conversation per episode of up to
`verify_iter` replies, each failed reply followed by the revision turn 'You failed this trial because {feedback}'.

`make_task(tokenizer, split, ...)` builds the static `GPTask` and its `GPTaskParams` (env params, the prompt codec
and the card atlas for GP-VL) for one of the spec's splits (`SPLITS`, generalpoints.md §5). Counts: GP-VL reports
`recognition_accuracy` over evaluated replies (a reply that misreads the cards, reward -1.5, is a miss).
Outcomes (`OUTCOMES`, from the verifier's feedback fragments; penalties stack, so the gravest one names a reply):
misread cards (GP-VL), then an illegal formula (characters or sequence), then wrong numbers (not in the hand, used
too often or not at all: J/Q/K read as 10 under the 11/12/13 rule land here), else correct / partial / wrong value.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.general_points import env as gp_env
from jaxrl_vlm.envs.general_points import prompt_tokens
from jaxrl_vlm.envs.general_points.cards import CANVAS_SIZE, card_atlas, render_hands
from jaxrl_vlm.envs.general_points import verifier, verifier_device
from jaxrl_vlm.envs.general_points.verifier import REWARD_INCORRECT_VISION
from jaxrl_vlm.shapes import round_up

OUTCOMES = ("correct", "partial", "wrong_value", "wrong_numbers", "illegal_formula", "misread_cards")


def _outcome_of_fragment() -> np.ndarray:
    """int32[F]: the outcome (index into OUTCOMES, graver = higher) each feedback fragment shows, -1 for none (card
    names, list brackets, separators, step_limit_reached); a reply's outcome is the gravest of its fragments."""
    shows = {verifier.MSG_CORRECT: "correct", verifier.MSG_PARTIAL: "partial", verifier.MSG_NO_MATCH: "wrong_value",
             verifier.MSG_PARTLY_CORRECT_TAIL: "wrong_value", verifier.MSG_INVALID_NUMBERS: "wrong_numbers",
             verifier.MSG_TOO_MANY_HEAD: "wrong_numbers", verifier.MSG_UNUSED: "wrong_numbers",
             verifier.MSG_ILLEGAL: "illegal_formula", verifier.MSG_AFTER_NUMBER: "illegal_formula",
             verifier.MSG_AFTER_OPERATOR: "illegal_formula", verifier.MSG_BEFORE_OPEN: "illegal_formula",
             verifier.MSG_AFTER_CLOSE: "illegal_formula", verifier.MSG_UNMATCHED: "illegal_formula",
             verifier.MSG_VISION: "misread_cards"}
    table = np.full(len(gp_env.feedback_fragment_texts()), -1, np.int32)
    for i, text in enumerate(gp_env.feedback_fragment_texts()):
        text = text.removeprefix(", ")
        for message, outcome in shows.items():
            if text == message or (message.endswith(": ") and text.startswith(message)):
                table[i] = OUTCOMES.index(outcome)
    return table


class GPSplit(NamedTuple):
    """A named evaluation split: face rule, OOD hands, suit set, and whether replies are verified repeatedly."""

    face_cards_as_10: bool
    ood: bool
    suits: str
    revise: bool = True


def gp_splits(language_only: bool) -> dict[str, GPSplit]:
    """The spec's splits: GP-L in_dist / rule_ood; GP-VL in_dist / rule_ood / visual_ood (black -> red) /
    recognition (one reply per episode, verification off)."""
    if language_only:
        return {"in_dist": GPSplit(True, False, "mixed"), "rule_ood": GPSplit(False, True, "mixed")}
    return {"in_dist": GPSplit(True, False, "black"), "rule_ood": GPSplit(False, True, "black"),
            "visual_ood": GPSplit(True, False, "red"), "recognition": GPSplit(True, False, "black", revise=False)}


@struct.dataclass
class GPTaskParams:
    """env: `env.EnvParams`; codec: `prompt_tokens.PromptCodec`; atlas: uint8[4, 13, 378, 270, 3] (GP-VL) or None."""

    env: gp_env.EnvParams
    codec: prompt_tokens.PromptCodec
    atlas: Any = None


class GPTask(protocol.Environment):
    """GeneralPoints episodes: state `env.EnvState`; the prompt holds the hand (GP-L) or the image (GP-VL)."""

    def __init__(self, *, prompt_width: int, feedback_width: int, verify_iter: int, language_only: bool,
                 resolution: int, trims_replies: bool = False):
        self.prompt_width = prompt_width
        self.trims_replies = trims_replies
        self.feedback_width = feedback_width
        self.turns = verify_iter
        self.conversations = 1
        self.vision = not language_only
        self.resolution = resolution
        self.action_key = ' "formula":'
        self.max_reply_bytes = verifier_device.MAX_REPLY_BYTES
        self.outcome_names = OUTCOMES
        self.count_names = {} if language_only else {"recognition_accuracy": "recognition_replies"}

    def static_key(self) -> tuple:
        return (self.prompt_width, self.feedback_width, self.turns, self.vision, self.resolution, self.trims_replies)

    def reset(self, key, params: GPTaskParams, index):
        _, state = gp_env.reset(key, params.env)
        return state

    def prompt(self, state, params: GPTaskParams) -> protocol.Prompt:
        batch = prompt_tokens.prompt_ids(params.codec, state.ranks[None], width=self.prompt_width)
        return protocol.Prompt(batch.ids[0], batch.lengths[0], batch.overflow[0])

    def step(self, state, reply, reply_len, params: GPTaskParams):
        evaluated = ~state.done & (state.remaining > 0)
        _, new, reward, done, info = gp_env.step(state, reply, reply_len, params.env)
        suffix = revision_suffix(params.codec, info["fragments"][None], info["num_fragments"][None],
                                 self.feedback_width)
        counts = {name: (evaluated & (reward != REWARD_INCORRECT_VISION), evaluated) for name in self.count_names}
        shown = jnp.where(jnp.arange(info["fragments"].shape[0]) < info["num_fragments"],
                          jnp.asarray(_outcome_of_fragment())[info["fragments"]], -1)
        outcome = jnp.where(evaluated, jnp.max(shown), -1)
        return new, protocol.Step(reward=reward, done=done, success=new.success, fresh=jnp.zeros((), bool),
                                  feedback_ids=suffix.ids[0], feedback_len=suffix.lengths[0],
                                  feedback_overflow=suffix.overflow[0], counts=counts, outcome=outcome)

    def image(self, state, params: GPTaskParams) -> jax.Array:
        return render_hands(state.ranks[None], state.suits[None], params.atlas, resolution=self.resolution)[0]


def revision_suffix(codec: prompt_tokens.PromptCodec, fragments: jax.Array, num_fragments: jax.Array,
                    width: int) -> prompt_tokens.TokenBatch:
    """Right-padded ids int32[B, width] of what follows a failed reply: assistant tail + 'You failed this trial
    because ' + the feedback fragments int32[B, K] (num_fragments int32[B] of them) + the user tail and generation
    prompt."""
    batch = fragments.shape[0]
    empty = prompt_tokens.TokenBatch(jnp.zeros((batch, 1), jnp.int32), jnp.zeros((batch,), jnp.int32),
                                     jnp.zeros((batch,), bool))
    return prompt_tokens.append_revision(codec, empty, jnp.zeros((batch, 1), jnp.int32),
                                         jnp.zeros((batch,), jnp.int32), fragments, num_fragments, width=width)


def make_task(tokenizer, split: str | GPSplit, *, language_only: bool = True, target: int = 24, verify_iter: int = 5,
              feedback_tokens: int = 48, resolution: int = CANVAS_SIZE, card_dir: str | None = None,
              template_kwargs: Mapping[str, Any] | None = None) -> tuple[GPTask, GPTaskParams]:
    """(GPTask, GPTaskParams) of a split: a name of `gp_splits(language_only)` or a `GPSplit` (e.g. the training
    settings); feedback_tokens bounds the verifier feedback of a revision turn (a longer one ends the episode).
    A split without revision (recognition) gets one reply per episode."""
    splits = gp_splits(language_only)
    if isinstance(split, str) and split not in splits:
        raise ValueError(f"unknown GP split {split!r}; expected one of {sorted(splits)}")
    spec = splits[split] if isinstance(split, str) else split
    turns = verify_iter if spec.revise else 1
    env_params = gp_env.make_params(target=target, face_cards_as_10=spec.face_cards_as_10, ood=spec.ood,
                                    suits=spec.suits, verify_iter=turns, language_only=language_only)
    codec = prompt_tokens.build_prompt_codec(tokenizer, language_only=language_only,
                                             face_cards_as_10=spec.face_cards_as_10, target=target,
                                             fragment_texts=gp_env.feedback_fragment_texts(),
                                             template_kwargs=template_kwargs)
    hands = jnp.repeat(jnp.arange(1, 14, dtype=jnp.int32)[:, None], 4, axis=1)  # the longest card names
    longest = int(jnp.max(prompt_tokens.prompt_ids(codec, hands, width=4096).lengths))
    task = GPTask(prompt_width=round_up(longest, 16),
                  feedback_width=prompt_tokens.revision_overhead(codec) + feedback_tokens, verify_iter=turns,
                  language_only=language_only, resolution=resolution, trims_replies=codec.trim is not None)
    atlas = None if language_only else jnp.asarray(card_atlas(card_dir))
    return task, GPTaskParams(env_params, codec, atlas)
