"""Evaluation sampling follows the checkpoint's generation_config.json as transformers' generate does (the reference
evaluator sets only max_new_tokens): sampling at its temperature / top_p when do_sample, else greedy; 'greedy' and
'config' override it."""
import json

import pytest

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import job


def write(directory, settings):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "generation_config.json").write_text(json.dumps(settings))
    return str(directory)


def test_generation_config_decides_the_evaluation_sampling(tmp_path):
    """Llama-3.2-11B-Vision-Instruct's file samples at 0.6 / 0.9; do_sample false, a missing file (a .gguf) and
    missing values give transformers' defaults. Catches temperature or top_p ignored, and do_sample ignored."""
    llama = write(tmp_path / "llama", {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "bos_token_id": 128000})
    assert job.generation_settings(llama) == (0.6, 0.9)
    assert job.generation_settings(write(tmp_path / "greedy", {"temperature": 0.6, "top_p": 0.9})) == (0.0, 1.0)
    assert job.generation_settings(write(tmp_path / "defaults", {"do_sample": True})) == (1.0, 1.0)
    assert job.generation_settings(str(tmp_path / "none")) == (0.0, 1.0)

    config = config_lib.base_config(job="eval", run_name="x")
    config.model.path = llama
    assert job.eval_sampling(config) == (0.6, 0.9)  # the default: the checkpoint's settings
    config.eval.sampling = "greedy"
    assert job.eval_sampling(config) == (0.0, 1.0)
    config.eval.sampling, config.eval.temperature, config.eval.top_p = "config", 0.3, 0.95
    assert job.eval_sampling(config) == (0.3, 0.95)
    config.eval.sampling = "checkpoint"
    config.eval.checkpoint = write(tmp_path / "exported", {"do_sample": True, "temperature": 0.2})
    assert job.eval_sampling(config) == (0.2, 1.0)  # an HF eval.checkpoint's own file first


def test_bad_sampling_settings_name_the_key():
    config = config_lib.base_config(job="eval", run_name="x")
    config.eval.sampling = "beam"
    with pytest.raises(ValueError, match="eval.sampling"):
        config_lib.validate(config)
    config.eval.sampling, config.eval.top_p = "config", 1.5
    with pytest.raises(ValueError, match="eval.top_p"):
        config_lib.validate(config)
