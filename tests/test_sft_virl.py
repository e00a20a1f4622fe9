"""V-IRL SFT: the expert conversations are the host expert's steps with the loss on exactly the replies, SFT lowers
the loss and logs the compute of a hand count (V-IRL-L, tiny random Llama), and a V-IRL-VL step on a tiny random
Mllama trains on the 2x2 view grids."""
import itertools
import json
import os

import numpy as np
import pytest
import transformers
from PIL import Image
from virl_routes import write_small_city

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.data.expert import expert_conversations
from jaxrl_vlm.data.virl_expert import expert_steps
from jaxrl_vlm.envs.virl.rails import route_template
from jaxrl_vlm.envs.virl.reader import load_route_set
from jaxrl_vlm.training.sft import train_sft

N, SEED = 8, 5  # 8 examples: the first 3 episodes of seed 5 over the small city (2 routes), the third cut short


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    return str(write_small_city(tmp_path_factory.mktemp("virl_city")))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("virl_sft_data"))


def virl_config(out_dir, checkpoint, city_dir, data_dir, **overrides):
    config = config_lib.base_config("sft", "x")
    config.out_dir = str(out_dir)
    config.model.path = checkpoint
    config.task.name = "virl"
    config.task.route_dir = city_dir
    config.eval.splits = "in_distribution"  # GP's default splits are not V-IRL splits
    config.data.data_dir = data_dir
    config.data.num_examples = N
    config.data.seed = SEED
    config.data.seq_len = 1152  # these conversations take up to ~1070 tokens of the tiny models' GP vocabulary
    config.sft.steps = 4
    config.sft.global_batch_size = 4
    config.sft.lr = 1e-2
    config.sft.warmup_ratio = 0.0
    config.checkpoint.every = 4
    config.checkpoint.export_hf = False
    config.log.tensorboard = False
    config.mesh.data = 1
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def host_expert(city_dir, count, vision=False):
    """The first `count` steps of the host V-IRL expert's episodes with seed SEED (no code of the SFT path)."""
    route_set = load_route_set(city_dir)
    templates = [route_template(route_set, r) for r in route_set.routes]
    return route_set, list(itertools.islice(expert_steps(templates, 10 * count, SEED, vision), count))


def messages(step, vision=False):
    user = [{"type": "image"}, {"type": "text", "text": step.prompt}] if vision else step.prompt
    return [{"role": "user", "content": user}, {"role": "assistant", "content": step.response}]


def check_conversation(tokenizer, example, step, vision=False):
    """The example is the step's conversation as the chat template renders it; the loss mask is one contiguous
    suffix, exactly the reply and the end-of-turn text the template writes after it."""
    ids, mask = example.input_ids, example.loss_mask
    decode = lambda x: tokenizer.decode(x.tolist())
    assert decode(ids) == tokenizer.apply_chat_template(messages(step, vision), tokenize=False)
    first = int(np.argmax(mask))
    assert mask[first:].all() and not mask[:first].any()
    assert decode(ids[~mask]) == tokenizer.apply_chat_template(messages(step, vision)[:1], tokenize=False,
                                                               add_generation_prompt=True)
    assert decode(ids[mask]) == step.response + "<|im_end|>\n"


def test_examples_are_the_host_expert_steps(tiny_checkpoint, city_dir, data_dir, tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    get_example, count = expert_conversations(virl_config(tmp_path, tiny_checkpoint, city_dir, data_dir), tokenizer)
    _, steps = host_expert(city_dir, N)
    assert count == N
    assert len({s.episode for s in steps}) > 1  # data.num_examples counts steps across episodes
    for i, step in enumerate(steps):
        example = get_example(i)
        assert example.image is None
        check_conversation(tokenizer, example, step)


def test_sft_lowers_the_loss_and_logs_the_hand_counted_compute(tmp_path, tiny_checkpoint, city_dir, data_dir):
    """4 steps of 4 over the 8 examples (2 epochs): the loss falls, and the logged tokens / gflops are 6 N D with D
    the examples' tokens as transformers renders and tokenizes them (catches padding counted or examples lost)."""
    from test_compute import gflops, hf_num_parameters

    summary, _ = train_sft(virl_config(tmp_path, tiny_checkpoint, city_dir, data_dir))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = {row["step"]: row for row in map(json.loads, f)}
    assert summary["steps"] == 4 and rows[4]["loss"] < 0.9 * rows[1]["loss"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    _, steps = host_expert(city_dir, N)
    epoch_tokens = sum(len(tokenizer(tokenizer.apply_chat_template(messages(s), tokenize=False),
                                     add_special_tokens=False)["input_ids"]) for s in steps)
    n = hf_num_parameters(tiny_checkpoint)
    for step, epochs in ((2, 1), (4, 2)):  # epoch boundaries: the count does not depend on the order
        assert rows[step]["tokens"] == epochs * epoch_tokens
        assert rows[step]["gflops"] == pytest.approx(gflops(n, train=epochs * epoch_tokens), rel=1e-12)
    assert summary["tokens"] == 2 * epoch_tokens


def test_bad_task_config_names_the_key(tmp_path, tiny_checkpoint, city_dir, data_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    config = virl_config(tmp_path, tiny_checkpoint, city_dir, data_dir)
    config.task.route_dir = ""
    with pytest.raises(ValueError, match="config.task.route_dir is empty"):
        expert_conversations(config, tokenizer)
    config.task.route_dir = str(tmp_path / "no_city")
    with pytest.raises(FileNotFoundError, match="config.task.route_dir .*no_city"):
        expert_conversations(config, tokenizer)
    config.task.name = "chess"
    with pytest.raises(ValueError, match="config.task.name='chess'"):
        expert_conversations(config, tokenizer)


def test_vl_sft_step_on_tiny_mllama(tmp_path, city_dir, tiny_mllama_checkpoint):
    """V-IRL-VL: each example shows its step's 2x2 grid (the views renderer on the step's panorama and heading)
    before the Q_VIRL_VL prompt, and one SFT step of a tiny Mllama on them runs."""
    from jaxrl_vlm.data.virl_expert.builder import grid_renderer

    checkpoint = tiny_mllama_checkpoint
    # 8 px views resized to 8 px: 640 px views take seconds each on a CPU
    config = virl_config(tmp_path / "run", checkpoint, city_dir, str(tmp_path / "data"), task__language_only=False,
                         task__resolution=8, task__view_size=8, data__num_examples=2, sft__steps=1,
                         sft__global_batch_size=2, checkpoint__every=1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    get_example, count = expert_conversations(config, tokenizer)
    route_set, steps = host_expert(city_dir, 2, vision=True)
    assert count == 2
    for i, step in enumerate(steps):
        example = get_example(i)
        check_conversation(tokenizer, example, step, vision=True)
        panorama = np.asarray(Image.open(route_set.pano_files(step.pano)[0]).convert("RGB"))
        grid = grid_renderer(8, 8)(panorama, np.float32(step.heading), np.float32(route_set.rotation(step.pano)))
        np.testing.assert_array_equal(example.image, np.asarray(grid))
    summary, _ = train_sft(config)
    assert summary["steps"] == 1 and np.isfinite(summary["loss"])
