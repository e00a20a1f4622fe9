"""V-IRL job configs: validation of the V-IRL SFT/PPO configs, route-directory and vision-model errors naming the key,
and the synthetic cities that replace empty route directories (built once, reused, rebuilt after a killed build)."""
import importlib.util
import json
import os

import pytest

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.envs.virl import cities
from jaxrl_vlm.envs.virl.evaluation import load_templates
from jaxrl_vlm.envs.virl.verifier import BUDGET_EXHAUSTED_MESSAGE, FEEDBACK_MESSAGES


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join("configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.mesh.data = 1  # the tests' 8 fake devices would be 8 batch shards
    return config


@pytest.fixture
def small_cities(monkeypatch):
    """3x3-intersection cities of 16 px panoramas (the real sizes take seconds), and a list of every build's dir."""
    monkeypatch.setattr(cities, "GRID", (3, 3))
    monkeypatch.setattr(cities, "LANGUAGE_PANO_WIDTH", 16)
    built = []
    real = cities.write_city

    def counting(out_dir, *args):
        built.append(out_dir)
        return real(out_dir, *args)

    monkeypatch.setattr(cities, "write_city", counting)
    return built


@pytest.mark.parametrize("name", ["sft_virl", "ppo_virl", "eval_virl"])
def test_virl_configs_validate_with_empty_route_dirs(name):
    """The V-IRL configs of every job pass validate with their default '' route dirs (built on first use)."""
    config = load_config(name)
    assert config.task.name == "virl" and config.task.route_dir == config.task.ood_route_dir == ""
    config_lib.validate(config)


def test_bad_route_dir_names_the_key(tmp_path):
    """A route dir without route_infos.json fails naming its key; training jobs read task.route_dir even when no
    split does; a bad city_routes fails when a city is to be built."""
    for key in ("route_dir", "ood_route_dir"):
        config = load_config("ppo_virl")
        config.task[key] = str(tmp_path / "nowhere")
        with pytest.raises(FileNotFoundError, match=rf"config\.task\.{key} .*nowhere.*route_infos\.json"):
            config_lib.validate(config)
    config = load_config("sft_virl")
    config.eval.splits = "visual_ood"
    config.task.route_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config\.task\.route_dir "):
        config_lib.validate(config)
    config = load_config("sft_virl")
    config.task.city_routes = 0
    with pytest.raises(ValueError, match=r"config\.task\.city_routes=0"):
        config_lib.validate(config)


def test_vision_task_needs_a_vision_language_model(tmp_path, tiny_mllama_checkpoint):
    """language_only=False with the embedded GGUF or a text-only HF checkpoint fails naming task.language_only and
    model.path; a (tiny) Mllama checkpoint passes. ppo_virl_vl's default model.path is the text-only one."""
    text_hf = tmp_path / "text_hf"
    text_hf.mkdir()
    (text_hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for name, path in [("ppo_virl_vl", None), ("ppo_virl", config_lib.EMBEDDED_MODEL), ("ppo_virl", str(text_hf))]:
        config = load_config(name)
        config.task.language_only = False
        config.model.path = path or config.model.path
        with pytest.raises(ValueError, match=r"task\.language_only=False .*model\.path=") as error:
            config_lib.validate(config)
        assert ("model_type 'llama'" in str(error.value)) == (path == str(text_hf))
    config = load_config("ppo_virl_vl")
    config.model.path = tiny_mllama_checkpoint
    config_lib.validate(config)
    config = load_config("ppo_gp")  # GP-VL too
    config.task.language_only = False
    with pytest.raises(ValueError, match=r"task\.language_only=False .*model\.path="):
        config_lib.validate(config)


def test_ppo_virl_feedback_budget_fits_every_feedback(smollm2_tokenizer):
    """ppo.feedback_tokens covers the longest revision-turn feedback in the embedded tokenizer (a longer one would end
    every such episode)."""
    longest = max(len(smollm2_tokenizer.encode("You failed this trial because " + m, add_special_tokens=False))
                  for m in (*FEEDBACK_MESSAGES, BUDGET_EXHAUSTED_MESSAGE))
    assert longest <= load_config("ppo_virl").ppo.feedback_tokens


def test_cities_built_on_first_use_then_reused(tmp_path, small_cities, capsys):
    """Empty route dirs become <city_cache>/train (city_routes routes) and <city_cache>/ood (18 routes over 4 styles),
    announced by one line each, that the reader loads and validate accepts; a second job reuses them unchanged."""
    config = load_config("ppo_virl")
    config.task.city_cache = str(tmp_path / "cache")
    config.task.city_routes = 3
    cities.resolve_route_dirs(config)
    train, ood = str(tmp_path / "cache" / "train"), str(tmp_path / "cache" / "ood")
    assert (config.task.route_dir, config.task.ood_route_dir) == (train, ood)
    assert small_cities == [train, ood]
    assert capsys.readouterr().out.count("V-IRL: building the synthetic city") == 2
    for directory, routes in [(train, 3), (ood, 18)]:
        route_set, templates = load_templates(directory)  # checks every rail point's street-view files
        assert len(route_set.routes) == len(templates) == routes
    config_lib.validate(config)
    marker_time = os.path.getmtime(os.path.join(train, cities.MARKER))

    again = load_config("sft_virl")
    again.task.city_cache = config.task.city_cache
    again.task.city_routes = 3
    cities.resolve_route_dirs(again)
    assert (again.task.route_dir, again.task.ood_route_dir) == (train, ood)
    assert small_cities == [train, ood] and capsys.readouterr().out == ""
    assert os.path.getmtime(os.path.join(train, cities.MARKER)) == marker_time


def test_killed_builds_are_redone(tmp_path, small_cities, monkeypatch):
    """A build killed after writing the city but before its marker is redone by the next job; so is a killed rebuild
    with other settings, which must not leave the old city's marker to vouch for the half-replaced files."""
    counting = cities.write_city

    def killed(out_dir, *args):
        counting(out_dir, *args)
        raise KeyboardInterrupt

    config = load_config("eval_virl")
    config.eval.splits = "in_distribution"
    config.task.city_cache = str(tmp_path / "cache")
    train = str(tmp_path / "cache" / "train")
    for first_routes, then_routes in [(None, 3), (3, 4)]:  # a first build killed; a rebuild (3 -> 4 routes) killed
        if first_routes:
            config.task.route_dir, config.task.city_routes = "", first_routes
            cities.resolve_route_dirs(config)
        monkeypatch.setattr(cities, "write_city", killed)
        config.task.route_dir, config.task.city_routes = "", then_routes
        with pytest.raises(KeyboardInterrupt):
            cities.resolve_route_dirs(config)
        assert os.path.isfile(os.path.join(train, "route_infos.json"))
        assert not os.path.exists(os.path.join(train, cities.MARKER))
        monkeypatch.setattr(cities, "write_city", counting)
        built = len(small_cities)
        config.task.route_dir, config.task.city_routes = "", first_routes or then_routes
        cities.resolve_route_dirs(config)
        assert len(small_cities) == built + 1
        assert len(load_templates(train)[0].routes) == config.task.city_routes


def test_cities_rebuilt_for_other_settings_or_narrower_panoramas(tmp_path, small_cities):
    """Another city_routes rebuilds the training city; panoramas narrower than asked rebuild, wider ones are reused;
    an eval job that reads only task.route_dir builds no OOD city; a given route dir is left alone; GP is a no-op."""
    config = load_config("eval_virl")
    config.eval.splits = "in_distribution"
    config.task.city_cache = str(tmp_path / "cache")
    config.task.city_routes = 2
    cities.resolve_route_dirs(config)
    train = str(tmp_path / "cache" / "train")
    assert small_cities == [train] and config.task.ood_route_dir == ""
    config.task.route_dir, config.task.city_routes = "", 4
    cities.resolve_route_dirs(config)
    assert small_cities == [train, train] and len(load_templates(train)[0].routes) == 4
    for width, rebuilds in [(32, True), (16, False), (32, False)]:
        assert cities.ensure_city(train, 0, 4, ("soho",), width) == rebuilds
    assert len(small_cities) == 3
    config.eval.splits = "visual_ood"
    config.task.ood_route_dir = train
    cities.resolve_route_dirs(config)
    assert config.task.ood_route_dir == train and len(small_cities) == 3
    gp = load_config("ppo_gp")
    cities.resolve_route_dirs(gp)
    assert gp.task.route_dir == "" and len(small_cities) == 3


def test_vision_jobs_ask_for_full_size_panoramas(tmp_path, monkeypatch):
    """V-IRL-VL cities are built with VISION_PANO_WIDTH panoramas (V-IRL-L with LANGUAGE_PANO_WIDTH)."""
    calls = []
    monkeypatch.setattr(cities, "ensure_city", lambda directory, seed, routes, styles, width, workers:
                        calls.append((os.path.basename(directory), routes, width)))
    for language_only, width in [(True, cities.LANGUAGE_PANO_WIDTH), (False, cities.VISION_PANO_WIDTH)]:
        config = load_config("ppo_virl")
        config.task.language_only = language_only
        config.task.city_cache = str(tmp_path)
        cities.resolve_route_dirs(config)
        assert calls[-2:] == [("train", config.task.city_routes, width), ("ood", 18, width)]
    assert cities.VISION_PANO_WIDTH == 2048
