"""The study (`jaxrl_vlm.study`): the matched-compute schedule, the report and plots from a small fake results file,
and a killed study that resumes without redoing a finished stage (a tiny random Llama on GP-L)."""
import importlib.util
import json
import os

import numpy as np
import pytest

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import study


def result(success, replies=10, **extra):
    """A result in the evaluator schema with `replies` replies split over two outcomes."""
    correct = round(success * replies)
    return {"split": "x", "episodes": 10, "success": success, "success_stderr": 0.05, "mean_reward": success - 1,
            "replies": replies, "overflow": 0, "outcomes": {"correct": correct, "wrong_numbers": replies - correct},
            **extra}


def test_schedule_and_matched_compute():
    """Points evenly spaced over the budget beyond Init; the matched point is the largest one every branch reached,
    and a branch's record there is its first evaluation at or past it. Catches points counted from 0 instead of
    Init's compute, a matched point one branch never reached, and a record before the point."""
    assert study.schedule(100.0, 40.0, 4) == [110.0, 120.0, 130.0, 140.0]
    curves = {"sft": [{"gflops": 111.0}, {"gflops": 125.0}, {"gflops": 133.0}],
              "ppo": [{"gflops": 118.0}, {"gflops": 126.0}]}
    assert study.matched_point(curves, [110.0, 120.0, 130.0, 140.0]) == 120.0
    assert study.record_at(curves["ppo"], 120.0) == {"gflops": 126.0}
    assert study.matched_point({"sft": [], "ppo": curves["ppo"]}, [110.0]) is None


def test_report_and_plots_from_a_fake_results_file(tmp_path):
    """The report of a small fake study (two branches, GP-VL-like results with recognition): results.json round
    trips, results.md has a row per checkpoint with outcome shares, and the Fig. 5, Fig. 6/7 and Fig. 8 PNGs are
    written."""
    config = config_lib.base_config(job="study", run_name="fake")
    config.out_dir = str(tmp_path)
    rec = lambda s: {"recognition_accuracy": 0.5 + s, "recognition_accuracy_stderr": 0.1, "recognition_replies": 10}
    make = lambda g, s: {"gflops": g, "results": {"in_dist": result(s, **rec(s)), "rule_ood": result(s / 2, **rec(s))}}
    init = {"step": 2, "tokens": 100, **make(100.0, 0.1)}
    histories = {"sft": [make(111.0, 0.3), make(122.0, 0.4)], "ppo": [make(115.0, 0.2), make(121.0, 0.5)]}
    results = study.write_report(config, init, histories, [110.0, 120.0])
    assert results["matched_gflops"] == 120.0
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["branches"]["ppo"][1]["results"]["in_dist"]["success"] == 0.5
    table = (tmp_path / "results.md").read_text()
    assert "| Init | 100 | 10.0% ± 5.0 |" in table and "| ppo 2 | 121 | 50.0% ± 5.0 |" in table
    assert "| 50.0% | 50.0% |" in table  # ppo 2 in_dist: 5 of 10 replies correct, 5 wrong numbers
    for name in ("success_vs_gflops", "success_at_equal_compute", "recognition_vs_success_in_dist",
                 "recognition_vs_success_rule_ood"):
        assert os.path.getsize(tmp_path / f"{name}.png") > 10_000, name


def load_study_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join("configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_vision_study_configs_name_the_missing_model():
    """The -VL studies validate up to their placeholder model.path, which they name."""
    for name in ("study_gp_vl", "study_virl_vl"):
        config = load_study_config(name)
        config.mesh.data = 1
        with pytest.raises((ValueError, FileNotFoundError), match="model.path"):
            config_lib.validate(config)


def test_study_configs_validate():
    config = load_study_config("study_virl_l")
    config.mesh.data = 1
    config_lib.validate(config)
    config = load_study_config("study_gp_l")
    config.mesh.data = 1  # the tests' 8 fake devices would make 8 batch shards
    config_lib.validate(config)
    config.study.branches = "sft,ppo,grpo"
    config_lib.validate(config)
    ppo, grpo = study.stage_config(config, "ppo"), study.stage_config(config, "grpo")
    assert (ppo.job, ppo.ppo.algorithm, ppo.ppo.group_size) == ("ppo", "ppo", 1)
    assert (grpo.job, grpo.ppo.algorithm, grpo.ppo.group_size) == ("ppo", "grpo", config.study.group_size)
    assert grpo.ppo.init == ppo.ppo.init == os.path.join(config.out_dir, "init", "checkpoints")
    assert len({ppo.out_dir, grpo.out_dir, study.stage_config(config, "sft").out_dir}) == 3
    config.study.branches = "sft,dpo"
    with pytest.raises(ValueError, match="study.branches 'sft,dpo'"):
        config_lib.validate(config)
    config.study.branches = "sft"
    config.ppo.init = "model.path"
    with pytest.raises(ValueError, match="ppo.init"):
        config_lib.validate(config)


class Killed(Exception):
    pass


def test_killed_study_resumes_without_redoing_finished_stages(tmp_path, tiny_checkpoint, monkeypatch):
    """A study killed during its SFT branch's second evaluation (the first one evaluated and checkpointed), then
    run again: Init (trained and evaluated once) is not redone, the branch resumes from its first point's
    checkpoint with that evaluation in its history and evaluates only the second point again, each at its point
    of the schedule. Catches a stage rerun despite its done.json, an SFT branch that restarts from Init, and
    evaluations (or the history) lost at a resume."""
    from jaxrl_vlm.training import sft

    config = config_lib.base_config(job="study", run_name="tiny")
    config.out_dir = str(tmp_path / "study")
    config.model.path = tiny_checkpoint
    config.data.data_dir = str(tmp_path / "data")
    config.data.num_examples = 64
    config.sft.steps, config.sft.global_batch_size, config.sft.schedule = 50, 8, "constant"
    config.checkpoint.every, config.checkpoint.async_save = 50, False
    config.log.tensorboard = False
    config.mesh.data = 1
    config.eval.splits = "in_dist"
    config.eval.episodes = config.eval.batch_size = 2
    config.eval.max_new_tokens = 8
    config.study.init_steps, config.study.points, config.study.branches = 1, 2, "sft"
    calls = {"train": 0, "evaluations": 0}
    evaluated = []
    real_train, real_evaluate = sft.train_sft, study._evaluate_fn

    def counting_train(*args, **kwargs):
        calls["train"] += 1
        return real_train(*args, **kwargs)

    def killing_evaluate(cfg, model, tokenizer):
        evaluate = real_evaluate(cfg, model, tokenizer)

        def run(params):
            calls["evaluations"] += 1
            evaluated.append(evaluate(params))
            if calls["evaluations"] == 3:  # Init's, the branch's first, then its second
                raise Killed  # before the second point's checkpoint: the resume evaluates that point again
            return evaluated[-1]
        return run

    monkeypatch.setattr(sft, "train_sft", counting_train)
    monkeypatch.setattr(study, "_evaluate_fn", killing_evaluate)
    init = study.run_init(config)
    config.study.budget_gflops = 2.5 * init["gflops"]  # Init is one step: a point every ~1.25 steps
    with pytest.raises(Killed):
        study.run_study(config)
    assert calls == {"train": 2, "evaluations": 3}
    history = study.run_study(config)["branches"]["sft"]
    assert calls == {"train": 3, "evaluations": 4}  # Init not trained nor evaluated again, the first point kept
    points = study.schedule(init["gflops"], config.study.budget_gflops, 2)
    assert [r["results"] for r in history] == evaluated[1:2] + evaluated[3:]
    for record, point in zip(history, points):  # the first step whose compute reached the point
        assert point <= record["gflops"] < point + 1.5 * init["gflops"]
    assert json.loads((tmp_path / "study" / "init" / "done.json").read_text())["step"] == 1
    assert np.isfinite(json.loads((tmp_path / "study" / "results.json").read_text())["init"]["gflops"])
