"""GeneralPoints evaluation protocol (spec generalpoints.md §5), batched on the device.

Each batch of episodes: draw hands exactly (env.reset_batch), assemble the prompt ids on the device, sample replies,
turn reply tokens into bytes (token_bytes), score them with the device verifier (env.step_batch), and for episodes
not yet done append the reply and the verifier's feedback as a revision turn, up to `verify_iter` replies. Every
turn re-prefills the whole conversation, as the reference does (exact for chat templates that trim message
contents); the PPO rollout continues the KV cache instead. Episode success: some reply scored 5.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxrl_vlm.envs.general_points import env as gp_env
from jaxrl_vlm.envs.general_points import prompt_tokens
from jaxrl_vlm.envs.general_points.cards import CANVAS_SIZE, card_atlas, render_hands
from jaxrl_vlm.envs.general_points.token_bytes import token_byte_table, tokens_to_bytes
from jaxrl_vlm.models import api as models_api
from jaxrl_vlm.models.sampler import lengths_without_stop
from jaxrl_vlm.shapes import round_up
from jaxrl_vlm.stats import binomial_stderr

WIDTH_ROUNDING = 64
FIRST_PROMPT_WIDTH = 4096  # assembled at this width, then cropped to the batch's longest prompt


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


@functools.partial(jax.jit, static_argnames=("width",))
def _first_prompt(codec, ranks, width: int):
    return prompt_tokens.prompt_ids(codec, ranks, width=width, pad_id=0, padding_side="left")


@functools.partial(jax.jit, static_argnames=("width",))
def _revision(codec, prev, reply, reply_len, fragments, num_fragments, width: int):
    return prompt_tokens.append_revision(codec, prev, reply, reply_len, fragments, num_fragments, width=width,
                                         pad_id=0, padding_side="left")


@jax.jit
def _score(state, tokens, reply_len, byte_table, params):
    reply_bytes, byte_len = tokens_to_bytes(tokens, reply_len, byte_table)
    return gp_env.step_batch(state, reply_bytes, byte_len, params)


class GPEvaluator:
    """Evaluates a loaded model on the GP splits (tokenizer pieces and jitted functions built once).

    GP-VL (language_only=False) needs a vision model (`vision_inputs`) and a chat template that places the image
    placeholder for an image content part; hands are drawn with the card atlas at `resolution`.
    """

    def __init__(self, model: Any, tokenizer, *, language_only: bool = True, target: int = 24,
                 resolution: int = CANVAS_SIZE, card_dir: str | None = None,
                 template_kwargs: Mapping[str, Any] | None = None):
        if not language_only and not hasattr(model, "vision_inputs"):
            raise ValueError(f"GP-VL evaluation needs a vision-language model, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.language_only = language_only
        self.target = target
        self.resolution = resolution
        self.atlas = None if language_only else jnp.asarray(card_atlas(card_dir))
        self.template_kwargs = dict(template_kwargs or {})
        self.byte_table = token_byte_table(tokenizer, special_tokens="empty")
        self._codecs: dict[bool, prompt_tokens.PromptCodec] = {}

    def _codec(self, face_cards_as_10: bool) -> prompt_tokens.PromptCodec:
        if face_cards_as_10 not in self._codecs:
            self._codecs[face_cards_as_10] = prompt_tokens.build_prompt_codec(
                self.tokenizer, language_only=self.language_only, face_cards_as_10=face_cards_as_10,
                target=self.target, fragment_texts=gp_env.feedback_fragment_texts(),
                template_kwargs=self.template_kwargs)
        return self._codecs[face_cards_as_10]

    def evaluate(self, split: str, *, episodes: int, batch_size: int, max_new_tokens: int,
                 temperature: float = 0.0, verify_iter: int = 5, seed: int = 0, params=None) -> dict[str, Any]:
        """Run `episodes` episodes of a split; returns success (or recognition accuracy), its standard error, counts.

        params: model params to evaluate (default: the loaded model's).
        """
        splits = gp_splits(self.language_only)
        if split not in splits:
            raise ValueError(f"unknown GP split {split!r}; expected one of {sorted(splits)}")
        spec = splits[split]
        env_params = gp_env.make_params(target=self.target, face_cards_as_10=spec.face_cards_as_10, ood=spec.ood,
                                        suits=spec.suits, verify_iter=verify_iter if spec.revise else 1,
                                        language_only=self.language_only)
        codec = self._codec(spec.face_cards_as_10)
        model = self.model if params is None else models_api.with_params(self.model, params)
        successes, rewards, replies, misread, overflow = 0, [], 0, 0, 0
        key = jax.random.key(seed)
        turns = verify_iter if spec.revise else 1
        progress = tqdm(total=-(-episodes // batch_size) * turns, desc=f"eval {split}", unit="turn",
                        dynamic_ncols=True, disable=jax.process_index() != 0)
        for start in range(0, episodes, batch_size):
            n = min(batch_size, episodes - start)
            key, reset_key = jax.random.split(key)
            _, state = gp_env.reset_batch(reset_key, env_params, batch_size)
            conv = _crop_left_padding(_first_prompt(codec, state.ranks, FIRST_PROMPT_WIDTH))
            images = None if self.language_only else np.asarray(
                render_hands(state.ranks, state.suits, self.atlas, resolution=self.resolution))
            for turn in range(turns):
                ids = np.asarray(conv.ids)
                vision = {} if images is None else model.vision_inputs([[image] for image in images], ids)
                out = models_api.sample(model, ids, _mask(conv), max_new_tokens=max_new_tokens,
                                        temperature=temperature, seed=seed * 100_003 + start * 11 + turn, **vision)
                tokens = np.asarray(out.tokens)
                reply_len = np.asarray(lengths_without_stop(tokens, out.lengths, model.eos_token_ids))
                active = ~np.asarray(state.done)
                _, state, reward, _, info = _score(state, jnp.asarray(tokens), jnp.asarray(reply_len),
                                                   self.byte_table, env_params)
                reward = np.asarray(reward)[:n]
                rewards.extend(reward[active[:n]].tolist())
                replies += int(active[:n].sum())
                misread += int((active[:n] & (reward == -1.5)).sum())
                progress.update(1)
                if turn + 1 == turns or bool(np.asarray(state.done).all()):
                    break
                width = round_up(conv.ids.shape[1] + max_new_tokens + 256, WIDTH_ROUNDING)
                conv = _crop_left_padding(_revision(codec, conv, jnp.asarray(tokens), jnp.asarray(reply_len),
                                                    info["fragments"], info["num_fragments"], width))
                overflow += int(np.asarray(conv.overflow)[:n].sum())
            successes += int(np.asarray(state.success)[:n].sum())
            progress.update(turns - 1 - turn)
        progress.close()
        result: dict[str, Any] = {"split": split, "episodes": episodes, "replies": replies,
                                  "mean_reward": float(np.mean(rewards)) if rewards else float("nan"),
                                  "context_overflow": overflow}
        if spec.revise:
            p = successes / episodes
            result.update(success=p, stderr=binomial_stderr(p, episodes))
        else:
            p = 1.0 - misread / max(replies, 1)
            result.update(recognition_accuracy=p, stderr=binomial_stderr(p, replies))
        return result


def _crop_left_padding(conv: prompt_tokens.TokenBatch) -> prompt_tokens.TokenBatch:
    """Drop leading all-padding columns of a left-padded batch, keeping a width that is a multiple of 64 (few shapes,
    few compilations) so each turn's prefill costs what the conversations need, not the worst-case bound."""
    width = min(conv.ids.shape[1], round_up(int(np.asarray(conv.lengths).max()), WIDTH_ROUNDING))
    return prompt_tokens.TokenBatch(conv.ids[:, conv.ids.shape[1] - width:], conv.lengths, conv.overflow)


def _mask(conv) -> np.ndarray:
    width = conv.ids.shape[1]
    return np.arange(width)[None, :] >= width - np.asarray(conv.lengths)[:, None]


