"""GeneralPoints env: episode invariants over a batch of 4096 envs, rewards equal the host verifier, param errors;
rule-OOD and GP-VL params stepped against the host verifier on the same replies.

One jitted reset and one jitted step (batch 4096, replies of 128 bytes) are compiled once for the module; the
rule-OOD / GP-VL tests run the same jitted functions at batch 48 (one more compile per static params).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_vlm.envs.general_points import env, prompts, verifier
from jaxrl_vlm.envs.general_points.sampling import SUITS, hand_numbers
from jaxrl_vlm.envs.general_points.solver import solution_table
from scripted_policy import scripted_reply

B, L = 4096, 128
TRACES = {"step": 0}


def _step_counting(state, reply, reply_len, params):
    TRACES["step"] += 1  # runs only while tracing
    return env.step_batch(state, reply, reply_len, params)


@pytest.fixture(scope="module")
def compiled():
    return jax.jit(env.reset_batch, static_argnums=2), jax.jit(_step_counting)


def _encode(replies):
    out = np.zeros((len(replies), L), np.uint8)
    for i, r in enumerate(replies):
        data = r.encode("utf-8")
        out[i, : len(data)] = np.frombuffer(data, np.uint8)
    return jnp.asarray(out), jnp.asarray([len(r.encode("utf-8")) for r in replies], jnp.int32)


def _expert(ranks, face):
    numbers = [int(n) for n in hand_numbers(np.asarray(ranks), face)]
    return prompts.expert_response(ranks, solution_table(24).solutions(numbers)[0], face_cards_as_10=face)


WRONG = ['{"formula": "1+2+3+4=10"}', "hello", '"formula": "(3+"', '{"cards": [], "formula": 24}',
         '"formula": "10*10-1"', "\n{\n  \"formula\": \"8/(3-8/3)=24\",\n}", '"formula": "13 x 2"']


def _policy(ranks, face, turn):
    """Row i: expert when i % 3 == 0, else a fixed wrong/garbage reply that changes with the turn."""
    return [_expert(r, face) if i % 3 == 0 else WRONG[(i + turn) % len(WRONG)] for i, r in enumerate(ranks)]


def _host_scores(replies, ranks, face):
    return [verifier.score_response(r, h, face_cards_as_10=face, language_only=True) for r, h in zip(replies, ranks)]


def _decode(info, i):
    return bytes(np.asarray(info["feedback"][i])[: int(info["feedback_len"][i])]).decode("ascii")


def _fragment_text(info, i):
    texts = env.feedback_fragment_texts()
    frags = np.asarray(info["fragments"][i])[: int(info["num_fragments"][i])]
    return "".join(texts[f] for f in frags)


def test_episode_invariants_and_host_rewards(compiled):
    reset, step = compiled
    verify_iter, face = 3, True
    params = env.make_params(verify_iter=verify_iter)
    obs, state = reset(jax.random.key(11), params, B)
    ranks = np.asarray(obs.ranks)
    assert np.isin(np.asarray(obs.suits), [SUITS.index(s) for s in "HSDC"]).all()
    table = solution_table(24)
    assert all(table.solutions(n) for n in set(map(tuple, np.sort(hand_numbers(ranks, face), 1).tolist())))
    expert = np.arange(B) % 3 == 0
    for turn in range(verify_iter + 2):
        replies = _policy(ranks, face, turn)
        was_done = np.asarray(state.done)
        obs, state, reward, done, info = step(state, *_encode(replies), params)
        reward, done = np.asarray(reward), np.asarray(done)
        assert (np.asarray(obs.turn)[expert] == 1).all()
        if turn == 0:
            assert (reward[expert] == 5).all() and done[expert].all() and np.asarray(info["success"])[expert].all()
        else:
            assert (reward[was_done] == 0).all() and done[was_done].all()
        rows = np.flatnonzero(~was_done & ~expert)
        if turn < verify_iter:
            assert (np.asarray(obs.turn)[rows] == turn + 1).all()
            host = _host_scores([replies[i] for i in rows], ranks[rows], face)
            assert reward[rows].tolist() == [h[0] for h in host]
            for i, (_, feedback) in zip(rows[:300], host[:300]):
                assert _decode(info, i) == feedback == _fragment_text(info, i)
            assert (done[rows] == (reward[rows] == 5)).all()
        elif turn == verify_iter:
            assert (reward[rows] == -1).all() and done[rows].all() and np.asarray(info["truncated"])[rows].all()
            assert _decode(info, rows[0]) == "step_limit_reached" == _fragment_text(info, rows[0])
        else:
            assert rows.size == 0 and (reward == 0).all() and int(np.asarray(info["feedback_len"]).max()) == 0
    assert not np.asarray(state.truncated)[expert].any() and np.asarray(state.done).all()
    assert TRACES["step"] == 1, "step retraced across turns"


def test_verify_iter_is_dynamic(compiled):
    reset, step = compiled
    params = env.make_params(verify_iter=1)
    _, state = reset(jax.random.key(2), params, B)
    garbage = _encode(["hello"] * B)
    _, state, reward, done, _ = step(state, *garbage, params)
    assert (np.asarray(reward) == -3).all() and not np.asarray(done).any()
    _, state, reward, done, info = step(state, *garbage, params)
    assert (np.asarray(reward) == -1).all() and np.asarray(done).all() and np.asarray(info["truncated"]).all()
    assert TRACES["step"] == 1


def test_single_env_shapes_and_vl_params():
    """The unbatched step traces (eval_shape: no compile) with GP-VL params; outputs are per-env scalars/vectors."""
    params = env.make_params(language_only=False, suits="black", face_cards_as_10=False, ood=True, resolution=560)
    obs, state = jax.eval_shape(env.reset, jax.random.key(0), params)
    assert obs.ranks.shape == (4,) and state.remaining.shape == ()
    obs, state, reward, done, info = jax.eval_shape(env.step, state, jnp.zeros((L,), jnp.uint8), jnp.int32(3), params)
    assert reward.shape == () and reward.dtype == jnp.float32 and done.dtype == jnp.bool_
    assert info["feedback"].ndim == 1 and info["fragments"].ndim == 1 and info["num_fragments"].shape == ()


@pytest.mark.parametrize("kwargs,error,match", [
    ({"suits": "green"}, ValueError, "suits"),
    ({"verify_iter": 0}, ValueError, "verify_iter"),
    ({"verify_iter": 2.5}, TypeError, "verify_iter"),
    ({"target": "24"}, TypeError, "target"),
    ({"target": True}, TypeError, "target"),
    ({"target": 2**21}, ValueError, "target"),
    ({"resolution": 64}, ValueError, "resolution"),
    ({"resolution": 224.0}, TypeError, "resolution"),
    ({"face_cards_as_10": 1}, TypeError, "face_cards_as_10"),
    ({"ood": "yes"}, TypeError, "ood"),
    ({"language_only": None}, TypeError, "language_only"),
])
def test_invalid_params_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        env.make_params(**kwargs)


def test_params_static_dynamic_split():
    params = env.make_params(language_only=False, suits="red", resolution=560)
    leaves = jax.tree.leaves(params)
    assert any(leaf is params.verify_iter for leaf in leaves)
    assert params.resolution == 560 and params.suits == "red" and not params.language_only
    assert env.feedback_fragment_texts()[env.STEP_LIMIT_FRAGMENT] == verifier.STEP_LIMIT_FEEDBACK


# --- rule-OOD and GP-VL params, stepped against the host verifier on the same replies ---
OOD_B = 48
KINDS = ("correct", "memorised", "no_solution", "wrong_numbers", "illegal", "misread")


def _kind_replies(ranks, face):
    """Row i: the scripted reply of kind KINDS[i % 6] for its hand (tests/scripted_policy.py), under a face rule."""
    return [scripted_reply(KINDS[i % len(KINDS)], r, face) for i, r in enumerate(ranks.tolist())]


def _check_against_host(step, state, replies, ranks, params):
    """One step of every row; reward, feedback and success equal the host verifier's for the same reply."""
    _, state, reward, done, info = step(state, *_encode(replies), params)
    for i, reply in enumerate(replies):
        host_reward, host_feedback = verifier.score_response(
            reply, ranks[i].tolist(), face_cards_as_10=params.face_cards_as_10, language_only=params.language_only)
        assert float(reward[i]) == host_reward, (i, reply, host_feedback)
        assert _decode(info, i) == host_feedback, (i, reply)
        assert bool(done[i]) == bool(info["success"][i]) == (host_reward == 5)
    return np.asarray(reward)


def test_rule_ood_params_sample_face_cards_and_score_with_11_12_13(compiled):
    """make_params(face_cards_as_10=False, ood=True): every hand holds a face card and is solvable with J/Q/K =
    11/12/13 (spec §1), and the step scores with that rule as the host verifier does: the OOD-rule expert reply wins,
    the face-10 ("memorised") one loses 2 + 2 (spec §4.5). Catches the env ignoring the OOD sampling or the face rule
    of its params (e.g. scoring every split with face cards as 10)."""
    reset, step = compiled
    params = env.make_params(face_cards_as_10=False, ood=True, verify_iter=2)
    _, state = reset(jax.random.key(5), params, OOD_B)
    ranks = np.asarray(state.ranks)
    assert (ranks.max(axis=1) >= 11).all()
    table = solution_table(24)
    assert all(table.solutions(hand) for hand in ranks.tolist())  # the numbers are the ranks under this rule
    reward = _check_against_host(step, state, _kind_replies(ranks, face=False), ranks, params)
    kinds = np.arange(OOD_B) % len(KINDS)
    want = {"correct": 5, "memorised": -4, "no_solution": -1, "wrong_numbers": -2, "illegal": -3, "misread": 5}
    for k, name in enumerate(KINDS):  # GP-L: the cards field is not read, a misread reply with a right formula wins
        assert (reward[kinds == k] == want[name]).all(), name


def test_vl_params_check_the_cards_field(compiled):
    """make_params(language_only=False) (GP-VL, black suits, OOD rule): hands use only black suits, and a reply whose
    "cards" list is wrong scores -1.5 "you recognized wrong cards" even with a right formula (spec §4.2), as the host
    verifier says; the same replies under GP-L params ignore the cards. Catches the env dropping the vision check
    for GP-VL params (or applying it to GP-L)."""
    reset, step = compiled
    vl = env.make_params(language_only=False, suits="black", face_cards_as_10=False, ood=True, verify_iter=2)
    gp_l = env.make_params(face_cards_as_10=False, ood=True, verify_iter=2)
    _, state = reset(jax.random.key(6), vl, OOD_B)
    ranks = np.asarray(state.ranks)
    assert np.isin(np.asarray(state.suits), [SUITS.index("S"), SUITS.index("C")]).all()
    replies = _kind_replies(ranks, face=False)
    misread = np.arange(OOD_B) % len(KINDS) == KINDS.index("misread")
    vl_reward = _check_against_host(step, state, replies, ranks, vl)
    assert (vl_reward[misread] == -1.5).all()
    l_reward = _check_against_host(step, state, replies, ranks, gp_l)
    assert (l_reward[misread] == 5).all()
    np.testing.assert_array_equal(vl_reward[~misread], l_reward[~misread])
