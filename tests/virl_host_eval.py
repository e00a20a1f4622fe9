"""The host-driven V-IRL evaluation of a loaded model (spec virl.md §1.8-1.10), the reference the tests hold the
on-device rollout (`jaxrl_vlm.rollout`, `evaluation.evaluator`) to: the §1.9 conversation protocol around the env.
(Moved here from `jaxrl_vlm/evaluation/virl.py` when the jobs moved to the device evaluator; same code.)

`VirlModelPolicy` is a `PolicyFn` for `envs.virl.evaluate_virl`. It keeps one conversation per episode: at the start
of an episode and after a correct move, a fresh single-turn conversation holding the env's prompt (V-IRL-VL: the 2x2
view grid, then the text); after a failed attempt, the previous conversation, the model's reply as an assistant turn
and the user turn "You failed this trial because " + the verifier's message. Every call renders each conversation
with the tokenizer's chat template (`apply_chat_template(..., add_generation_prompt=True)`) and tokenises the text
without special tokens, exactly as the reference does (so the ids are the reference's, not a piecewise assembly as in
the GP evaluator; evaluation re-prefills every turn either way). The env runs on UTF-8 byte prompts
(`PolicyBatch.texts`), which makes the prompt text exact for any tokenizer. Replies are sampled with
`models.api.sample` (greedy at temperature 0), decoded without special tokens and passed to the env as bytes.

`VirlModelEvaluator` runs the splits: success rate and per-step accuracy with binomial standard errors.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxrl_vlm.envs.virl.env import VirlConfig
from jaxrl_vlm.envs.virl.evaluation import SPLITS, PolicyBatch, evaluate_virl, replies_to_bytes
from jaxrl_vlm.envs.virl.prompts import FEEDBACK_PREFIX
from jaxrl_vlm.envs.virl.reader import load_route_set
from jaxrl_vlm.envs.virl.verifier import BUDGET_EXHAUSTED_MESSAGE, FEEDBACK_MESSAGES
from jaxrl_vlm.models import api as models_api
from jaxrl_vlm.models.sampler import lengths_without_stop
from jaxrl_vlm.shapes import round_up

# Verifier message of each PolicyBatch.feedback code 1..4 (0 is "Correct action.", 4 a forced failure).
FEEDBACK_TEXTS = FEEDBACK_MESSAGES + (BUDGET_EXHAUSTED_MESSAGE,)
WIDTH_ROUNDING = 256  # prompt widths are multiples of this: few shapes, few sampler compilations
VIEW_SIZE, RESOLUTION = 640, 1200  # spec §1.10: views of 640 px resized to 1200 px


def virl_conversation(prompt: str, replies: Sequence[str] = (), feedbacks: Sequence[str] = (), *,
                      vision: bool) -> list[dict]:
    """Host message list of one V-IRL conversation: the prompt (VL: [image, text] parts), then per failed attempt the
    reply (assistant) and "You failed this trial because " + its verifier message (user)."""
    if len(replies) != len(feedbacks):
        raise ValueError(f"need one feedback per reply, got {len(replies)} replies and {len(feedbacks)} feedbacks")
    content: Any = [{"type": "image"}, {"type": "text", "text": prompt}] if vision else prompt
    messages = [{"role": "user", "content": content}]
    for reply, feedback in zip(replies, feedbacks):
        messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": FEEDBACK_PREFIX + feedback})
    return messages


@dataclasses.dataclass
class _Conversation:
    prompt: str
    replies: list[str] = dataclasses.field(default_factory=list)
    feedbacks: list[str] = dataclasses.field(default_factory=list)
    last_reply: str = ""


class VirlModelPolicy:
    """A `PolicyFn` sampling a model's replies under the §1.9 conversation protocol (one instance per evaluation run).

    Needs `PolicyBatch.texts` (byte-token prompts: `evaluate_virl(..., encode=None)`) and `PolicyBatch.episodes`;
    VL (vision=True) needs `PolicyBatch.images` (render_images=True) and a model with `vision_inputs`. Rows are
    sampled in chunks of exactly `batch_size` (the last one padded with copies of its first row), left-padded to a
    multiple of WIDTH_ROUNDING tokens. Returns (uint8[B, reply_bytes], int32[B]) UTF-8 replies.
    """

    def __init__(self, model: Any, tokenizer, *, vision: bool, batch_size: int, max_new_tokens: int,
                 temperature: float = 0.0, seed: int = 0, template_kwargs: Mapping[str, Any] | None = None,
                 reply_bytes: int | None = None):
        if vision and not hasattr(model, "vision_inputs"):
            raise ValueError(f"V-IRL-VL evaluation needs a vision-language model, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.vision = vision
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.template_kwargs = dict(template_kwargs or {})
        self.reply_bytes = reply_bytes or max(1024, round_up(4 * max_new_tokens, WIDTH_ROUNDING))
        self.conversations: dict[int, _Conversation] = {}
        self.calls = 0

    def messages(self, episode: int) -> list[dict]:
        """The current message list of an episode (what the last call rendered for it)."""
        c = self.conversations[episode]
        return virl_conversation(c.prompt, c.replies, c.feedbacks, vision=self.vision)

    def _update(self, episode: int, feedback: int, prompt: str) -> None:
        """Advance an episode's conversation by the env's feedback code on its previous reply."""
        if feedback <= 0:  # first attempt, or the previous move was correct: a fresh conversation
            self.conversations[episode] = _Conversation(prompt)
            return
        if feedback >= len(FEEDBACK_TEXTS):
            raise ValueError(f"episode {episode}: unknown feedback code {feedback}")
        c = self.conversations.get(episode)
        if c is None:
            raise ValueError(f"episode {episode}: feedback {feedback} without a previous reply")
        c.replies.append(c.last_reply)
        c.feedbacks.append(FEEDBACK_TEXTS[feedback])

    def prompt_ids(self, episodes: Sequence[int]) -> list[list[int]]:
        """Token ids (no special tokens added beyond the template's) of the rendered conversations of episodes."""
        texts = [self.tokenizer.apply_chat_template(self.messages(int(e)), tokenize=False, add_generation_prompt=True,
                                                    **self.template_kwargs) for e in episodes]
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def __call__(self, batch: PolicyBatch) -> tuple[np.ndarray, np.ndarray]:
        """Advance each row's conversation by its feedback, sample the replies; (uint8[B, L], int32[B]) reply bytes."""
        if batch.texts is None or batch.episodes is None:
            raise ValueError("VirlModelPolicy needs PolicyBatch.texts and .episodes (evaluate_virl without encode)")
        if self.vision and batch.images is None:
            raise ValueError("V-IRL-VL needs PolicyBatch.images: evaluate_virl(..., vision=True, render_images=True)")
        for e, f, text in zip(batch.episodes, batch.feedback, batch.texts):
            self._update(int(e), int(f), text)
        ids = self.prompt_ids(batch.episodes)
        replies: list[str] = []
        for start in range(0, len(ids), self.batch_size):
            real = list(range(start, min(start + self.batch_size, len(ids))))
            rows = real + [real[0]] * (self.batch_size - len(real))
            replies += self._sample([ids[i] for i in rows], batch.images[rows] if self.vision else None,
                                    seed=self.seed * 100_003 + self.calls * 1009 + start)[:len(real)]
        self.calls += 1
        for e, reply in zip(batch.episodes, replies):
            self.conversations[int(e)].last_reply = reply
        return replies_to_bytes(replies, self.reply_bytes)

    def _sample(self, ids: list[list[int]], images: np.ndarray | None, seed: int) -> list[str]:
        """Replies to left-padded prompts (one chunk of batch_size rows)."""
        width = round_up(max(len(x) for x in ids), WIDTH_ROUNDING)
        input_ids = np.full((len(ids), width), self.model.pad_id, np.int32)
        mask = np.zeros((len(ids), width), bool)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x):] = x
            mask[i, width - len(x):] = True
        vision = {} if images is None else self.model.vision_inputs([[image] for image in images], input_ids)
        out = models_api.sample(self.model, input_ids, mask, max_new_tokens=self.max_new_tokens,
                                temperature=self.temperature, seed=seed, **vision)
        tokens = np.asarray(out.tokens)
        lengths = np.asarray(lengths_without_stop(tokens, out.lengths, self.model.eos_token_ids))
        return [self.tokenizer.decode(tokens[i, :lengths[i]].tolist(), skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False) for i in range(len(ids))]


class VirlModelEvaluator:
    """Evaluates a loaded model on the V-IRL splits (`envs.virl.evaluation.SPLITS`).

    language_only=False is V-IRL-VL: Q_VIRL_VL prompts and the 2x2 grid of views (view_size px, resized to
    resolution px) as the image of every conversation; it needs a vision model and a chat template that writes the
    image placeholder for an image content part.
    """

    def __init__(self, model: Any, tokenizer, *, language_only: bool = True, verify_iter: int = 2,
                 view_size: int = VIEW_SIZE, resolution: int = RESOLUTION,
                 template_kwargs: Mapping[str, Any] | None = None):
        if not language_only and not hasattr(model, "vision_inputs"):
            raise ValueError(f"V-IRL-VL evaluation needs a vision-language model, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.language_only = language_only
        self.verify_iter = verify_iter
        self.view_size = view_size
        self.resolution = resolution
        self.template_kwargs = dict(template_kwargs or {})

    def evaluate(self, split: str, route_dir: str | Path, *, episodes: int, batch_size: int, max_new_tokens: int,
                 temperature: float = 0.0, seed: int = 0, params=None) -> dict[str, Any]:
        """Run a split on the routes of route_dir; returns the `evaluate_virl` metrics (success_rate, success_se,
        per_step_accuracy, per_step_se, num_episodes, num_steps, routes, ...).

        Unordered splits draw `episodes` routes uniformly with replacement; visual_ood (ordered) runs routes in file
        order, one episode per route and at most `episodes` (the 18-route benchmark gives 18). params: model params
        to evaluate (default: the loaded model's).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown V-IRL split {split!r}; expected one of {sorted(SPLITS)}")
        if SPLITS[split].ordered:
            episodes = min(episodes, len(load_route_set(route_dir).routes))
        model = self.model if params is None else models_api.with_params(self.model, params)
        vision = not self.language_only
        policy = VirlModelPolicy(model, self.tokenizer, vision=vision, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                 template_kwargs=self.template_kwargs)
        return evaluate_virl(policy, route_dir, split, episodes, seed, vision=vision,
                             config=VirlConfig(verify_iter=self.verify_iter), render_images=vision,
                             view_size=self.view_size, resolution=self.resolution)
