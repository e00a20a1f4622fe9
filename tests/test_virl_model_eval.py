"""V-IRL evaluation of a model: the host-driven reference evaluator's §1.9 conversation protocol (`virl_host_eval`,
against transformers' chat template on hand-built message lists), the `jaxrl_vlm.eval` entry point (the on-device
`evaluation.evaluator`) end to end on a tiny random Llama, and config errors."""
import copy
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import virl_host_eval as virl_eval
from tiny_models import MULTIMODAL_CHATML
from virl_routes import write_small_city

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.envs.virl.env import ACTIONS
from jaxrl_vlm.envs.virl.evaluation import evaluate_virl

# Spec virl.md §1.6: the verifier's messages for a wrong action and for a wrong intersection claim (braces literal).
FORMAT_BLOCK = ('\n[Output]\n{{\n  "current observation": latest observation from the streetview grid,\n  "current '
                'instruction": analyze the full instruction and identify the sentence to be executed,\n  "action": '
                'the action to be taken chosen from the action space,\n}}.')
WRONG_REPLIES = {  # reply -> the verifier's message (no landmark text of the test city mentions an intersection)
    '{"current observation": "x", "action": "nope"}':
        "you make incorrect action. Please avoid this action and try again in the same format:" + FORMAT_BLOCK,
    '{"current observation": "an intersection", "action": "stop()"}':
        "you are not at any intersection. Please avoid this observation and try again in the same format:"
        + FORMAT_BLOCK,
}


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    return str(write_small_city(tmp_path_factory.mktemp("virl_city")))


class ScriptedModel:
    """Stands in for a model: `sample` replies with the texts the test queued, and records what it was fed."""

    def __init__(self, tokenizer, vision: bool):
        self.tokenizer = tokenizer
        self.eos_token_ids = (tokenizer.eos_token_id,)
        self.pad_id = 0
        self.queued: list[str] = []
        self.fed: list[tuple[np.ndarray, np.ndarray]] = []
        self.images: list[np.ndarray] = []
        if vision:
            self.vision_inputs = self._vision_inputs

    def _vision_inputs(self, images, input_ids):
        self.images.append(np.stack([image for [image] in images]))
        return {}

    def sample(self, model, input_ids, attention_mask, *, max_new_tokens, temperature, seed, **vision):
        assert model is self and temperature == 0.0
        self.fed.append((np.asarray(input_ids), np.asarray(attention_mask)))
        tokens = np.full((len(input_ids), max_new_tokens), self.pad_id, np.int32)
        lengths = np.zeros(len(input_ids), np.int32)
        take, self.queued = self.queued[:len(input_ids)], self.queued[len(input_ids):]  # chunks come in row order
        for i, text in enumerate(take):
            ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
            tokens[i, :len(ids)], lengths[i] = ids, len(ids)
        return types.SimpleNamespace(tokens=tokens, lengths=lengths)


@pytest.mark.parametrize("vision", [False, True], ids=["L", "VL"])
def test_conversation_protocol_matches_the_chat_template(city_dir, smollm2_tokenizer, monkeypatch, vision):
    """Episodes 1-4 answer each rail point but the final stop() wrongly once (two kinds of error), then correctly;
    episode 0 always correctly. Each call's model input must be transformers' rendering of the spec's message list:
    a fresh conversation at the start and after a correct move, else the previous conversation + the reply +
    'You failed this trial because ' + the verifier's message."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = MULTIMODAL_CHATML if vision else tokenizer.chat_template
    model = ScriptedModel(tokenizer, vision)
    monkeypatch.setattr(virl_eval.models_api, "sample", model.sample)
    policy = virl_eval.VirlModelPolicy(model, tokenizer, vision=vision, batch_size=4, max_new_tokens=64)
    expected: dict[int, list[dict]] = {}
    last_wrong: dict[int, str | None] = {}
    retries, errors_seen = 0, set()

    def policy_fn(batch):
        nonlocal retries
        replies = []
        for i, e in enumerate(batch.episodes.tolist()):
            if last_wrong.get(e):
                feedback = "You failed this trial because " + WRONG_REPLIES[last_wrong[e]]
                expected[e] += [{"role": "assistant", "content": last_wrong[e]}, {"role": "user", "content": feedback}]
                retries += 1
                errors_seen.add(last_wrong[e])
            else:
                text = batch.texts[i]
                expected[e] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]
                                if vision else text}]
            gt = ACTIONS[batch.state.action[i, batch.state.t[i]]]
            wrong = None if e == 0 or last_wrong.get(e) or gt == "stop()" else list(WRONG_REPLIES)[(e + retries) % 2]
            replies.append(wrong or f'{{"current observation": "x", "action": "{gt}"}}')
            last_wrong[e] = wrong
        model.queued = replies
        fed_before = len(model.fed)
        out = policy(batch)
        rows = [row for ids, mask in model.fed[fed_before:] for row in zip(ids, mask)][:len(replies)]
        for e, (ids, mask) in zip(batch.episodes.tolist(), rows):
            want = tokenizer.apply_chat_template(expected[e], add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
            assert ids[mask].tolist() == want and not mask[:len(mask) - len(want)].any()
        if vision:
            grids = np.concatenate(model.images[fed_before:])[:len(replies)]
            assert np.array_equal(grids, batch.images)
        return out

    result = evaluate_virl(policy_fn, city_dir, "in_distribution", 5, seed=3, vision=vision, render_images=vision,
                           view_size=8, resolution=8)
    assert result["success_rate"] == 1.0 and errors_seen == set(WRONG_REPLIES)
    # Each wrong reply was followed by one retry; every other call was answered correctly.
    assert result["per_step_accuracy"] == pytest.approx((result["num_steps"] - retries) / result["num_steps"])


def test_eval_entry_point_runs_all_three_virl_splits(tmp_path, city_dir, tiny_checkpoint):
    """`python -m jaxrl_vlm.eval --config=configs/eval_virl.py` on a tiny random Llama and two tiny cities."""
    from jaxrl_vlm.envs.virl.make_city import write_city

    checkpoint = tiny_checkpoint
    ood_dir = str(tmp_path / "ood_city")
    write_city(ood_dir, seed=1, n_routes=2, styles=["milan"], pano_width=64, grid=(3, 3))
    out_dir = tmp_path / "out"
    overrides = [f"--config.out_dir={out_dir}", f"--config.model.path={checkpoint}",
                 f"--config.task.route_dir={city_dir}", f"--config.task.ood_route_dir={ood_dir}",
                 "--config.eval.episodes=3", "--config.eval.batch_size=4", "--config.eval.max_new_tokens=4",
                 "--config.mesh.data=1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    run = subprocess.run([sys.executable, "-m", "jaxrl_vlm.eval", "--config=configs/eval_virl.py", *overrides],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(out_dir / "eval.json") as f:
        results = json.load(f)
    assert list(results) == ["in_distribution", "rule_ood", "visual_ood"]
    for split, r in results.items():
        episodes = 2 if split == "visual_ood" else 3  # visual_ood: once per route of the 2-route city, in order
        assert r["episodes"] == episodes and r["split"] == split and r["overflow"] == 0
        # A random model never names the first point's turn: 2 wrong attempts and a forced failure per episode.
        rates = (r["success"], r["success_stderr"], r["step_accuracy"], r["step_accuracy_stderr"])
        assert rates == (0.0, 0.0, 0.0, 0.0)
        assert r["steps"] == 3 * episodes and r["replies"] == 2 * episodes
    assert "visual_ood step_accuracy" in run.stdout and "rule_ood" in run.stdout


def test_config_errors_name_the_key(tmp_path, city_dir):
    config = config_lib.base_config(job="eval", run_name="t")
    config.task.name = "nav"
    with pytest.raises(ValueError, match=r"config\.task\.name='nav'.*'gp', 'virl'"):
        config_lib.validate(config)
    config.task.name = "virl"
    with pytest.raises(ValueError, match=r"eval\.splits.*in_dist.*allowed.*in_distribution"):
        config_lib.validate(config)
    config.eval.splits = "in_distribution,visual_ood"
    config_lib.validate(config)  # empty route dirs pass: the job builds synthetic cities (envs/virl/cities.py)
    config.task.route_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config\.task\.route_dir .*nowhere.*route_infos\.json"):
        config_lib.validate(config)
    config.task.route_dir = city_dir
    config.task.ood_route_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config\.task\.ood_route_dir .*nowhere.*route_infos\.json"):
        config_lib.validate(config)
    config.task.ood_route_dir = city_dir
    config_lib.validate(config)
    config.task.name = "gp"  # GP keeps its own split names
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['in_distribution', 'visual_ood'\]"):
        config_lib.validate(config)
