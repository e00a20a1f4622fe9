"""V-IRL evaluation splits (spec virl.md §1.10) on the batched device environment.

| split | action space | routes |
|---|---|---|
| `in_distribution` | absolute | uniform with replacement (`random.choice`) |
| `rule_ood` | relative | uniform with replacement |
| `visual_ood` | absolute | in file order (`order=True`; the 18-route benchmark, or another city's directory) |

`evaluate_virl` runs `num_episodes` episodes in one batch; the policy sees only the still-running episodes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.virl.env import VirlConfig, VirlEnv, VirlParams, VirlState, build_params, prompt_length_bound
from jaxrl_vlm.envs.virl.observation import PanoramaStore
from jaxrl_vlm.envs.virl.prompt_tokens import Encode
from jaxrl_vlm.envs.virl.rails import RouteTemplate, route_template
from jaxrl_vlm.envs.virl.reader import RouteSet, load_route_set
from jaxrl_vlm.stats import binomial_stderr


@dataclasses.dataclass(frozen=True)
class Split:
    """An evaluation setting: action space and route order."""
    absolute_action: bool
    ordered: bool


SPLITS = {"in_distribution": Split(True, False), "rule_ood": Split(False, False), "visual_ood": Split(True, True)}


@dataclasses.dataclass
class PolicyBatch:
    """What a policy sees for the B still-running episodes.

    prompt_ids int32[B, P] (pad after prompt_lens), prompt_lens int32[B]; feedback int32[B]: -1 at the first attempt
    of an episode, 0 after a correct move, 1-3 the verifier message and 4 a forced failure of the previous call
    (`env.feedback_tokens` renders the 'You failed this trial because ...' user turn); pano/heading int32[B] the
    current view (VL renderer input); images uint8[B, 2r+5, 2r+5, 3] the 2x2 view grids when the evaluation
    renders them (VL with a `PanoramaStore`), else None; state: the batched `VirlState` (oracle baselines only);
    texts: the prompt texts when the evaluation runs without a tokenizer (byte tokens), else None; episodes int64[B]:
    each row's episode index in the evaluation batch, the same across calls (policies with per-episode memory).
    """
    prompt_ids: np.ndarray
    prompt_lens: np.ndarray
    feedback: np.ndarray
    pano: np.ndarray
    heading: np.ndarray
    state: VirlState  # numpy arrays
    images: np.ndarray | None = None
    texts: list[str] | None = None
    episodes: np.ndarray | None = None


PolicyFn = Callable[[PolicyBatch], Sequence[str] | tuple[np.ndarray, np.ndarray]]


def load_templates(route_dir: str | Path) -> tuple[RouteSet, list[RouteTemplate]]:
    """Read a route directory and build every route's template."""
    route_set = load_route_set(route_dir)
    return route_set, [route_template(route_set, r) for r in route_set.routes]


def utf8_encode(text: str) -> list[int]:
    """Byte-level 'tokenizer': the UTF-8 bytes of a text (used when evaluate_virl gets no tokenizer)."""
    return list(text.encode("utf-8"))


def replies_to_bytes(replies: Sequence[str], max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[B, max_bytes], int32[B]) UTF-8 replies, truncated to max_bytes."""
    out = np.zeros((len(replies), max_bytes), np.uint8)
    lens = np.zeros(len(replies), np.int32)
    for i, text in enumerate(replies):
        raw = text.encode("utf-8")[:max_bytes]
        out[i, :len(raw)] = np.frombuffer(raw, np.uint8)
        lens[i] = len(raw)
    return out, lens


@dataclasses.dataclass
class VirlEvaluator:
    """Jitted batched env functions for one configuration (reuse across calls to avoid recompiling)."""
    config: VirlConfig = dataclasses.field(default_factory=VirlConfig)

    def __post_init__(self):
        env = VirlEnv(self.config)
        self.env = env
        self.reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None, 0)))
        self.step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)), donate_argnums=0)
        self.prompt = jax.jit(jax.vmap(env.prompt_tokens, in_axes=(0, None)))

    def run(self, policy_fn: PolicyFn, params: VirlParams, routes: np.ndarray, seed: int,
            max_reply_bytes: int = 1024, panoramas: PanoramaStore | None = None, view_size: int = 640,
            resolution: int = 1200, byte_tokens: bool = False) -> dict:
        """Run one episode per entry of `routes` (int32[E], -1 = uniform draw) to the end; returns the metrics.

        With `panoramas`, each PolicyBatch carries the rendered 2x2 view grids of its episodes; with byte_tokens
        (params built with `utf8_encode`), the prompt texts."""
        n = len(routes)
        state = self.reset(jax.random.split(jax.random.PRNGKey(seed), n), params, jnp.asarray(routes, jnp.int32))
        max_calls = (self.config.verify_iter + 1) * int(params.slot_valid.shape[1]) + 1
        rows = np.arange(n)
        for call in range(max_calls + 1):
            host = jax.device_get(state)
            if host.done.all():
                break
            if call == max_calls:
                raise RuntimeError(f"episodes did not finish within {max_calls} calls")
            active = np.flatnonzero(~host.done)
            ids, lens = jax.device_get(self.prompt(state, params))
            if lens.max() > ids.shape[1]:
                raise ValueError(f"a prompt has {lens.max()} tokens > max_prompt_tokens={ids.shape[1]}; use a "
                                 f"VirlConfig with max_prompt_tokens >= prompt_length_bound(params)")
            batch = PolicyBatch(ids[active], lens[active], host.feedback[active], host.pano[rows, host.t][active],
                                host.heading[rows, host.t][active], jax.tree.map(lambda x: x[active], host),
                                episodes=active)
            if byte_tokens:
                batch.texts = [bytes(ids[i, :lens[i]].astype(np.uint8)).decode("utf-8") for i in active]
            if panoramas is not None:  # all rows, so one compilation serves every step
                grids = panoramas.grids(host.pano[rows, host.t], host.heading[rows, host.t], view_size, resolution)
                batch.images = np.asarray(grids)[active]
            replies = policy_fn(batch)
            if not isinstance(replies, tuple):
                replies = replies_to_bytes(list(replies), max_reply_bytes)
            reply_bytes = np.zeros((n, replies[0].shape[1]), np.uint8)
            reply_lens = np.zeros(n, np.int32)
            reply_bytes[active], reply_lens[active] = replies
            state, _ = self.step(state, reply_bytes, reply_lens, params)
        host = jax.device_get(state)
        success = host.is_success & host.done
        steps, correct = int(host.num_steps.sum()), int(host.num_correct.sum())
        success_rate, step_accuracy = float(success.mean()) if n else 0.0, correct / max(steps, 1)
        return {"num_episodes": n, "success_rate": float(success.mean()),
                "success_se": binomial_stderr(success_rate, n), "num_steps": steps,
                "per_step_accuracy": step_accuracy, "per_step_se": binomial_stderr(step_accuracy, steps),
                "routes": host.route.tolist()}


def evaluate_virl(policy_fn: PolicyFn, route_dir: str | Path, split: str, num_episodes: int, seed: int,
                  encode: Encode | None = None, vision: bool = False, config: VirlConfig | None = None,
                  evaluator: VirlEvaluator | None = None, render_images: bool = False, view_size: int = 640,
                  resolution: int = 1200) -> dict:
    """Success rate and per-step accuracy (with binomial standard errors) of `policy_fn` on a split.

    policy_fn maps a `PolicyBatch` to replies (list of str, or (uint8[B, L], int32[B]) bytes); `encode` tokenises
    prompt pieces (no special tokens); without it prompts are UTF-8 byte ids and `PolicyBatch.texts` holds them.
    Per-step accuracy counts every call, retries included (spec §1.8); its
    standard error treats calls as independent trials. With vision and render_images, the policy also gets the
    2x2 view grids (`PolicyBatch.images`, views of view_size px resized to resolution). Without an `evaluator`, one is
    built from `config` (default `VirlConfig()`) with max_prompt_tokens set to the route set's prompt bound.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown V-IRL split {split!r}; expected one of {sorted(SPLITS)}")
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    setting = SPLITS[split]
    route_set, templates = load_templates(route_dir)
    params, _ = build_params(templates, encode or utf8_encode, setting.absolute_action, vision)
    if evaluator is None:
        config = dataclasses.replace(config or VirlConfig(), max_prompt_tokens=prompt_length_bound(params))
        evaluator = VirlEvaluator(config)
    routes = (np.arange(num_episodes) % len(templates) if setting.ordered
              else np.full(num_episodes, -1)).astype(np.int32)
    store = PanoramaStore(route_set, templates) if vision and render_images else None
    result = evaluator.run(policy_fn, params, routes, seed, panoramas=store, view_size=view_size,
                           resolution=resolution, byte_tokens=encode is None)
    result.update(split=split, vision=vision, route_dir=str(route_dir))
    return result
