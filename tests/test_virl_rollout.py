"""V-IRL through the environment protocol on the device (`envs.virl.task`, `jaxrl_vlm.rollout`, the evaluator)
against the host: scripted replies (`virl_scripted`) replayed through the host env and verifier give the same
rewards, episode outcomes and conversation structure (spec virl.md §1.6-1.9), and every played conversation in the
KV cache is exactly what the chat template renders for the host's message list (`virl_host_eval.virl_conversation`).

One small city, one rollout shape per env (ROWS rows, MAX_NEW tokens a reply): the evaluator's in-distribution runs
reuse the rollout compiled for the direct rollout test."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import virl_scripted as vs
from virl_replay import model_eos, replay, reply_text
from virl_host_eval import virl_conversation
from virl_routes import write_small_city

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.envs.virl.env import episode_randomness, max_legs
from jaxrl_vlm.envs.virl.evaluation import load_templates
from jaxrl_vlm.envs.virl.host_env import HostNavigationEnv
from jaxrl_vlm.envs.virl.task import make_task
from jaxrl_vlm.evaluation.evaluator import Evaluator
from jaxrl_vlm.models.token_bytes import token_byte_table

MAX_NEW = 72  # the small city's longest oracle reply is 60 tokens + EOS; the over-long ones are ~200 tokens
# (policy, route) of each row: routes 0 MoMA (8 key points and candidates), 1 (4 key points), 2 (2 key points)
SCRIPT = [
    (vs.oracle, 0), (vs.oracle, 1), (vs.wrong, 0), (vs.not_json, 1), (vs.no_action_key, 2),
    (vs.overlong_action_first, 0), (vs.overlong_action_late, 2), (vs.retry, 0), (vs.fail_at(2), 0),
    (vs.fail_at_stop, 2),
]
ROWS = len(SCRIPT)


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    return str(write_small_city(tmp_path_factory.mktemp("virl_city")))


@pytest.fixture(scope="module")
def templates(city_dir):
    return load_templates(city_dir)[1]


@pytest.fixture(scope="module")
def task(smollm2_tokenizer, city_dir):
    return make_task(smollm2_tokenizer, "in_distribution", city_dir, verify_iter=2)


@pytest.fixture(scope="module")
def model(smollm2_tokenizer):
    return vs.ScriptedVirlModel(smollm2_tokenizer)


def test_scripted_oracle_reads_the_rail_from_the_prompt(templates):
    """The scripted model's oracle (`virl_scripted.read_point`) names each point's ground truth from the prompt text
    alone: the host rail's action, observation and sentence, for compass and relative turns and random drops."""
    rng = np.random.default_rng(0)
    for absolute in (True, False):
        host = HostNavigationEnv(templates, absolute_action=absolute)
        for episode in range(30):
            route = episode % len(templates)
            host.reset(route, int(rng.integers(360)), rng.random((templates[route].num_legs, 5)))
            terminated = False
            while not terminated:
                point = vs.read_point(host.prompt())
                p = host.point
                assert point == (host.t, p.gt_action, p.oracle_observation, p.instruction), (absolute, route, host.t)
                reward, terminated, _, _ = host.step(vs.oracle(vs.Query(0, host.prompt(), point, (), ())))
                assert reward == 1.0


@pytest.fixture(scope="module")
def rolled_out(smollm2_tokenizer, task, templates, model):
    """ROWS episodes on the routes of SCRIPT, rolled out on the device with the scripted replies; each row's host
    env is reset with the device reset's route, initial-heading draw and drop draws (`episode_randomness` of the
    reset key's episode half, as in test_virl_env.py)."""
    tokenizer = smollm2_tokenizer
    env, params = task
    routes = jnp.asarray([route for _, route in SCRIPT], jnp.int32)
    keys = jax.random.split(jax.random.key(7), ROWS)
    state = jax.jit(jax.vmap(env.env.reset, in_axes=(0, None, 0)))(keys, params.env, routes)
    heading0, draws = jax.vmap(lambda k: episode_randomness(jax.random.split(k)[1], max_legs(params.env)))(keys)
    model.reset(vs.per_row([policy for policy, _ in SCRIPT]))
    ep = rollout_lib.rollout(env, model.decoder, model.params, params, token_byte_table(tokenizer, "empty"), state,
                             jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0),
                             jnp.asarray(model.eos_token_ids, jnp.int32), max_new_tokens=MAX_NEW, pad_id=model.pad_id)
    ep = jax.device_get(ep)
    hosts = []
    for b, (_, route) in enumerate(SCRIPT):
        host = HostNavigationEnv(templates, absolute_action=True, verify_iter=2)
        host.reset(route, int(heading0[b]), np.asarray(draws[b])[:templates[route].num_legs])
        hosts.append(host)
    assert np.asarray(ep.state.route).tolist() == np.asarray(routes).tolist()
    assert np.asarray(ep.state.num_points).tolist() == [len(h.rail) for h in hosts]
    asked, not_understood = list(model.asked), list(model.not_understood)
    episodes = [replay(tokenizer, ep, b, hosts[b], env.turns, model.eos) for b in range(ROWS)]
    return ep, episodes, asked, not_understood


def test_rewards_outcomes_and_turns_equal_the_host_replay(rolled_out, task, smollm2_tokenizer):
    """Per reply the device reward is the host verifier's; per episode success, env steps (forced failure included),
    correct steps and the [R, T] pattern of played turns (after a correct move the next reply opens a fresh
    conversation, after a wrong one it continues the conversation) are the host replay's."""
    ep, episodes, asked, not_understood = rolled_out
    env, _ = task
    assert not_understood == [] and not ep.overflow.any()
    assert len(asked) == int(ep.turn_valid.sum())  # every played turn is one reply the scripted model gave
    for b, host in enumerate(episodes):
        assert host.missing is None, (b, host.missing, "the host expects a reply the device did not play")
        rewards = [(c.rewards, c.device_rewards) for c in host.conversations]
        assert all(a == d for a, d in rewards), (b, rewards)
        played = np.zeros(ep.turn_valid.shape[1:], bool)
        for conv in host.conversations:
            for r, t in conv.positions:
                played[r, t] = True
        np.testing.assert_array_equal(ep.turn_valid[b], played, err_msg=f"row {b}")
        assert (ep.reward[b][~played] == 0).all()
        hits, trials = (int(x[b]) for x in ep.counts["step_accuracy"])
        assert (bool(ep.success[b]), trials, hits) == (host.success, host.steps, host.correct), b
        verdicts = [{1.0: "correct", -1.0: "wrong_action", -1.5: "wrong_observation"}[reward]
                    for c in host.conversations for reward in c.rewards]  # every reply, not the forced step
        assert dict(zip(env.outcome_names, ep.outcomes[b].tolist())) == {
            name: verdicts.count(name) for name in env.outcome_names}, b
        assert (int(ep.state.num_steps[b]), int(ep.state.num_correct[b])) == (host.steps, host.correct)
        assert bool(ep.state.done[b])
    # the scripts do what they are meant to (else the checks above prove little)
    outcome = [(h.success, h.forced) for h in episodes]
    assert outcome[0] == outcome[1] == outcome[5] == outcome[7] == (True, None)  # oracle, cut after the action, retry
    assert all(not success for success, _ in outcome[2:5] + outcome[6:7] + outcome[8:])
    assert [episodes[b].steps for b in (2, 3, 4, 6)] == [3] * 4  # two replies at the start + the forced failure
    assert outcome[8][1] not in (None, "stop()") and outcome[9][1] == "stop()"  # forced failure mid-route / at stop
    assert (episodes[7].steps, episodes[7].correct) == (2 * int(ep.state.num_points[7]), int(ep.state.num_points[7]))
    rewards = {reward for h in episodes for conv in h.conversations for reward in conv.rewards}
    assert rewards == {1.0, -1.0, -1.5}
    tokenizer = smollm2_tokenizer
    stops = {b: [reply_text(tokenizer, ep, b, r, t, model_eos(tokenizer))[1]
                 for conv in episodes[b].conversations for r, t in conv.positions] for b in range(ROWS)}
    assert all(all(s) for b, s in stops.items() if b not in (5, 6))  # MAX_NEW holds every other reply
    assert not any(stops[5]) and not any(stops[6])  # over-long replies are cut at MAX_NEW tokens
    assert (ep.reply_len[5][ep.turn_valid[5]] == MAX_NEW).all()
    # a correct move opens a fresh conversation; a wrong reply continues the same one
    retry_conversations = episodes[7].conversations
    assert all(c.rewards[-1] == 1.0 and len(c.rewards) == 2 and c.rewards[0] < 0 for c in retry_conversations)
    assert len(retry_conversations) == int(ep.state.num_points[7]) == int(ep.turn_valid[7, :, 0].sum())
    assert env.conversations == ep.turn_valid.shape[1] and env.turns == ep.turn_valid.shape[2] == 2


def test_conversations_are_the_chat_template_rendering(rolled_out, smollm2_tokenizer):
    """§1.9 on the device: each played conversation's cache, compacted, decodes to the chat template's rendering of
    the host message list (the host env's prompt, then per earlier failed reply the reply and 'You failed this trial
    because ' + the verifier's message) up to each reply; the reply's tokens follow, and nothing else is there."""
    tokenizer = smollm2_tokenizer
    ep, episodes, _, _ = rolled_out
    b_, r_, c_ = ep.slot_tokens.shape
    ids, mask = rollout_lib.compact(ep.slot_tokens.reshape(b_ * r_, c_), ep.slot_valid.reshape(b_ * r_, c_), c_, 0)
    ids, lengths = np.asarray(ids).reshape(b_, r_, c_), np.asarray(mask).sum(-1).reshape(b_, r_)
    eos = model_eos(tokenizer)
    checked = 0
    for b, host in enumerate(episodes):
        for r, conv in enumerate(host.conversations):
            assert [pos[0] for pos in conv.positions] == [r] * len(conv.positions)
            for t, (reply, _) in enumerate(zip(conv.replies, conv.feedbacks)):
                messages = virl_conversation(conv.prompt, conv.replies[:t], conv.feedbacks[:t], vision=False)
                expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                start = int(ep.reply_start[b, r, t])
                got = tokenizer.decode(ids[b, r, :start].tolist(), clean_up_tokenization_spaces=False)
                assert got == expected, (b, r, t)
                tokens, stopped, text = reply_text(tokenizer, ep, b, r, t, eos)
                assert text == reply
                last = t == len(conv.replies) - 1
                # a stop token is never written; a cut reply's last token only when the conversation goes on (it is
                # fed with the feedback that follows; a conversation's last token is never fed to the model)
                written = tokens if stopped or not last else tokens[:-1]
                np.testing.assert_array_equal(ids[b, r, start:start + len(written)], written)
                if last:
                    assert lengths[b, r] == start + len(written), (b, r)
                checked += 1
        assert (lengths[b, len(host.conversations):] == 0).all()
    assert checked == int(ep.turn_valid.sum())


@pytest.fixture(scope="module")
def evaluator(smollm2_tokenizer, model, task, city_dir):
    return Evaluator(model, smollm2_tokenizer, {
        "in_distribution": task, "visual_ood": make_task(smollm2_tokenizer, "visual_ood", city_dir, verify_iter=2)})


def route_of(templates):
    """Instruction text -> route index, over every initial heading."""
    table = {}
    for r, template in enumerate(templates):
        for heading in range(360):
            assert table.setdefault(template.global_instruction(heading), r) == r
    return lambda prompt: table[vs.instruction_text(prompt)]


def test_evaluator_scores_oracle_and_wrong_policies(evaluator, model, templates):
    route = route_of(templates)
    model.reset(vs.oracle)
    r = evaluator.evaluate("in_distribution", episodes=ROWS, batch_size=ROWS, max_new_tokens=MAX_NEW, seed=1)
    assert (r["success"], r["success_stderr"], r["step_accuracy"], r["step_accuracy_stderr"]) == (1.0, 0.0, 1.0, 0.0)
    assert r["episodes"] == ROWS and r["overflow"] == 0 and r["mean_reward"] == 1.0
    assert r["steps"] == r["replies"] == len(model.asked)  # one step per reply: no retries, no forced failures
    assert r["outcomes"] == {"correct": r["replies"], "wrong_action": 0, "wrong_observation": 0}
    assert len({route(q.prompt) for q in model.asked if q.point.t == 0}) > 1  # routes drawn at random
    model.reset(vs.wrong)
    r = evaluator.evaluate("in_distribution", episodes=ROWS, batch_size=ROWS, max_new_tokens=MAX_NEW, seed=2)
    assert (r["success"], r["step_accuracy"], r["steps"], r["replies"]) == (0.0, 0.0, 3 * ROWS, 2 * ROWS)
    assert r["mean_reward"] == -1.0 and model.not_understood == []
    assert r["outcomes"] == {"correct": 0, "wrong_action": 2 * ROWS, "wrong_observation": 0}  # at the start point


def test_evaluator_runs_visual_ood_routes_once_in_file_order(evaluator, model, templates):
    """An ordered split runs each route once, in file order, over batches (rows past the split's episode count are
    rolled out but not counted)."""
    route = route_of(templates)
    model.reset(vs.oracle)
    r = evaluator.evaluate("visual_ood", episodes=10, batch_size=2, max_new_tokens=MAX_NEW)
    assert (r["episodes"], r["success"], r["step_accuracy"]) == (len(templates), 1.0, 1.0)
    assert [(q.row, route(q.prompt)) for q in model.asked if q.point.t == 0] == [(0, 0), (1, 1), (0, 2), (1, 0)]
    second = [i for i, q in enumerate(model.asked) if q.point.t == 0][2]  # the second batch's first reply
    counted = model.asked[:second] + [q for q in model.asked[second:] if q.row == 0]
    assert r["steps"] == r["replies"] == len(counted)
