"""GP-VL smoke test: SFT and evaluation of a tiny random Mllama on card images (configs/sft_gp_vl.py)."""
import importlib.util
import os

import numpy as np
import pytest

from jaxrl_vlm.evaluation import job
from jaxrl_vlm.training.sft import train_sft
from tiny_models import save_tiny_gp_mllama


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
    config.sft.trainable = "freeze_vision"
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


def test_sft_and_eval_on_tiny_mllama(tmp_path):
    checkpoint = str(tmp_path / "tiny_mllama")
    save_tiny_gp_mllama(checkpoint)
    config = vl_config(tmp_path / "run", checkpoint)
    model, tokenizer = job.load_for_eval(config)
    vision_before = {k: np.asarray(v) for k, v in model.params["vision"]["patch_embed"].items()} \
        if isinstance(model.params["vision"]["patch_embed"], dict) else np.asarray(model.params["vision"]["patch_embed"])
    summary, state = train_sft(config, model=model, tokenizer=tokenizer)
    assert summary["steps"] == 2 and np.isfinite(summary["loss"])
    assert os.path.isfile(os.path.join(summary["hf_export"], "config.json"))
    vision_after = state.params["vision"]["patch_embed"]
    if isinstance(vision_before, dict):
        for key, value in vision_before.items():
            np.testing.assert_array_equal(np.asarray(vision_after[key]), value)
    else:
        np.testing.assert_array_equal(np.asarray(vision_after), vision_before)
    results = job.evaluate(config, model, tokenizer, params=state.params)
    assert set(results) == {"visual_ood", "recognition"}
    assert results["recognition"]["replies"] == 2
    assert 0.0 <= results["recognition"]["recognition_accuracy"] <= 1.0
    assert results["visual_ood"]["episodes"] == 2 and results["visual_ood"]["replies"] >= 2
