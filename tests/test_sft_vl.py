"""GP-VL smoke test: SFT and evaluation of a tiny random Mllama on card images (configs/sft_gp_vl.py)."""
import importlib.util
import os

import jax
import numpy as np
import pytest

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import job
from jaxrl_vlm.training.sft import train_sft


def vl_config(tmp_path, checkpoint):
    spec = importlib.util.spec_from_file_location("sft_gp_vl", os.path.join("configs", "sft_gp_vl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.out_dir = str(tmp_path)
    config.model.path = checkpoint
    config.model.dtype = "float32"
    config.task.resolution = 64
    config.data.num_examples = 8
    config.data.seq_len = 320
    config.sft.steps = 2
    config.sft.global_batch_size = 4
    config.sft.lr = 1e-2
    config.checkpoint.every = 2
    config.log.tensorboard = False
    config.mesh.data = 1
    config.eval.episodes = 2
    config.eval.batch_size = 2
    config.eval.max_new_tokens = 4
    config.task.verify_iter = 2
    config.eval.splits = "visual_ood,recognition"
    return config


def test_vl_config_without_checkpoint_is_a_clear_error(tmp_path):
    config = vl_config(tmp_path, "/nonexistent/Llama-3.2-11B-Vision")
    with pytest.raises(FileNotFoundError, match="Llama-3.2-11B-Vision"):
        train_sft(config)


@pytest.fixture(scope="module")
def tiny_mllama(tmp_path_factory, tiny_mllama_checkpoint):
    """(checkpoint, expert data directory) shared by the tests of this module."""
    return tiny_mllama_checkpoint, str(tmp_path_factory.mktemp("tiny_mllama_data"))


def split_params(params):
    """(vision tower and projector leaves, language-model leaves) as host arrays."""
    host = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
    return (host({k: params[k] for k in ("vision", "projector")}),
            host({k: v for k, v in params.items() if k not in ("vision", "projector")}))


def test_sft_and_eval_on_tiny_mllama(tmp_path, tiny_mllama):
    """GP-VL SFT with sft.trainable=freeze_vision_and_projector trains the language model and leaves the vision
    tower and projector bitwise unchanged (catches the freeze mask ignored or matching nothing); then the evaluation
    runs on the trained params."""
    checkpoint, data_dir = tiny_mllama
    config = vl_config(tmp_path / "run", checkpoint)
    config.data.data_dir = data_dir
    config.sft.trainable = "freeze_vision_and_projector"
    model, tokenizer = job.load_for_eval(config)
    frozen_before, text_before = split_params(model.params)
    summary, state = train_sft(config, model=model, tokenizer=tokenizer)
    assert summary["steps"] == 2 and np.isfinite(summary["loss"])
    assert os.path.isfile(os.path.join(summary["hf_export"], "config.json"))
    frozen_after, text_after = split_params(state.params)
    for before, after in zip(frozen_before, frozen_after):
        np.testing.assert_array_equal(after, before)
    # every language-model leaf, the cross-attention ones included (the tiny model's gates are open, 0.5)
    changed = [not np.array_equal(a, b) for a, b in zip(text_after, text_before)]
    assert all(changed), changed
    results = job.evaluate(config, model, tokenizer, params=state.params)
    assert set(results) == {"visual_ood", "recognition"}
    assert results["recognition"]["replies"] == 2
    assert 0.0 <= results["recognition"]["recognition_accuracy"] <= 1.0
    assert results["visual_ood"]["episodes"] == 2 and results["visual_ood"]["replies"] >= 2


def test_default_sft_trains_vision_and_projector(tmp_path, tiny_mllama):
    """With the default sft.trainable ('all') the same two steps change the vision tower and the projector: the
    frozen test above is not vacuous (the images do reach the loss), and 'all' freezes nothing."""
    checkpoint, data_dir = tiny_mllama
    config = vl_config(tmp_path / "run", checkpoint)
    config.data.data_dir = data_dir
    config.sft.trainable = config_lib.base_config(job="sft", run_name="default").sft.trainable
    config.checkpoint.export_hf = False
    model, tokenizer = job.load_for_eval(config)
    frozen = {k: model.params[k] for k in ("vision", "projector")}
    before = {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(frozen)}
    _, state = train_sft(config, model=model, tokenizer=tokenizer)
    after = {jax.tree_util.keystr(path): np.asarray(x)
             for path, x in jax.tree_util.tree_leaves_with_path({k: state.params[k] for k in frozen})}
    # the tiny model's gates are open (0.5), so every vision and projector leaf gets a gradient at the first step
    unchanged = sorted(k for k in before if np.array_equal(after[k], before[k]))
    assert unchanged == [], unchanged


@pytest.mark.parametrize("setting,frozen", [("all", set()), ("freeze_vision", {"vision"}),
                                            ("freeze_vision_and_projector", {"vision", "projector"})])
def test_trainable_settings_freeze_exactly_their_parts(tiny_mllama, setting, frozen):
    """Each sft.trainable setting's optimizer mask over the real Mllama params: the named parts frozen, every other
    leaf (language model, cross-attention, embeddings) trained; catches freeze_vision also freezing the projector or
    a pattern that misses or over-matches a part."""
    from jaxrl_vlm.models import api
    from jaxrl_vlm.training.optim import trainable_mask
    from jaxrl_vlm.training.sft import FROZEN_PATTERNS

    params = api.load(tiny_mllama[0]).params
    mask = trainable_mask(params, FROZEN_PATTERNS[setting])
    assert {"vision", "projector"} <= set(params) and len(params) > 2
    for part, tree in mask.items():
        assert set(jax.tree.leaves(tree)) == {part not in frozen}, part
