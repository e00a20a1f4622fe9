"""V-IRL expert SFT data: TFDS array_record builder, one example per rail step, deterministic by seed."""
import numpy as np
import pytest
from virl_routes import write_small_city

from jaxrl_vlm.data.virl_expert import build_expert_dataset, expert_config
from jaxrl_vlm.envs.virl.host_env import HostNavigationEnv
from jaxrl_vlm.envs.virl.rails import route_template, sample_episode_randomness
from jaxrl_vlm.envs.virl.reader import load_route_set
from jaxrl_vlm.envs.virl.verifier import score_response


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    return write_small_city(tmp_path_factory.mktemp("city"))


def records(builder):
    source = builder.as_data_source()["train"]
    return [source[i] for i in range(len(source))]


def test_language_dataset_matches_expert_rollouts(tmp_path, city_dir):
    builder = build_expert_dataset(tmp_path / "a", "l", city_dir, num_episodes=4, seed=3)
    got = records(builder)
    again = records(build_expert_dataset(tmp_path / "b", "l", city_dir, num_episodes=4, seed=3))
    assert [r["prompt"] for r in got] == [r["prompt"] for r in again]  # deterministic by seed
    rs = load_route_set(city_dir)
    templates = [route_template(rs, r) for r in rs.routes]
    rng, env, expected = np.random.default_rng(3), HostNavigationEnv(templates), []
    for _ in range(4):  # an independent expert rollout with the documented randomness
        route = int(rng.integers(len(templates)))
        env.reset(route, *sample_episode_randomness(rng, templates[route].num_legs))
        terminated = False
        while not terminated:
            expected.append((env.prompt(), env.point.gt_action, route))
            _, terminated, _, _ = env.step(f'"action": "{env.point.gt_action}"')
    assert [(r["prompt"].decode(), r["gt_action"].decode(), int(r["route"])) for r in got] == expected
    for r in got:
        assert r["response"].decode().startswith('\n{\n  "current observation": "')
        assert score_response(r["response"].decode(), r["gt_action"].decode(), "")[0] == 1.0
    assert [int(r["step"]) for r in got[:3]] == [0, 1, 2]


def test_vision_dataset_has_grid_images(tmp_path, city_dir):
    builder = build_expert_dataset(tmp_path, "vl", city_dir, num_episodes=1, seed=0, view_size=8, resolution=8)
    got = records(builder)
    assert got[0]["image"].shape == (21, 21, 3) and got[0]["image"].dtype == np.uint8
    assert got[0]["image"][8:13].max() == 0  # the 5 px black gap between the rows
    assert "[Observation format]" in got[0]["prompt"].decode()
    rs = load_route_set(city_dir)
    templates = [route_template(rs, r) for r in rs.routes]
    rng = np.random.default_rng(0)
    route = int(rng.integers(len(templates)))
    heading0, _ = sample_episode_randomness(rng, templates[route].num_legs)
    start = templates[route].slots[0].pano
    assert got[0]["pano_id"].decode() == rs.mapping.pano_ids[start]
    assert int(got[0]["heading"]) == templates[route].initial_heading(heading0)
    from PIL import Image

    from jaxrl_vlm.data.virl_expert.builder import grid_renderer
    pano = np.asarray(Image.open(rs.pano_files(start)[0]).convert("RGB"))
    expected = grid_renderer(8, 8)(pano, np.float32(got[0]["heading"]), np.float32(rs.rotation(start)))
    assert np.array_equal(got[0]["image"], np.asarray(expected))
    with pytest.raises(ValueError, match="unknown config"):
        expert_config("xl", city_dir, 1, 0)

