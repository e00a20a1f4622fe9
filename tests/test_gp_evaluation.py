"""GeneralPoints evaluation numbers (spec generalpoints.md §5) from scripted policies of known skill, on every split.

Each policy is a model object (tests/scripted_policy.py) that goes through the public evaluator,
`Evaluator(model, tokenizer, {split: make_task(tokenizer, split, ...)}).evaluate(split, ...)`, that is through the
on-device multi-turn rollout PPO samples with (KV cache continued across revision turns), with the real SmolLM2
tokenizer, sampler, prompt assembly and device verifier; it reads the hand from the prompt (GP-L) or from the card
image (GP-VL) and the face rule from the prompt text. Expected numbers come only from the policy's definition, the
spec's reward table (§4) and the hands the policy was shown: the first `episodes` first-turn prompts it answered,
batch after batch (rows past `episodes` in the last batch are padding). EPISODES is not a multiple of BATCH, so the
last batch always carries padding rows.

Each (modality, split, verify_iter) is a task of its own and compiles its own rollout (tens of seconds on CPU): the
tests share VERIFY_ITER wherever the budget does not matter, and one evaluator per (modality, verify_iter).
"""
import math

import numpy as np
import pytest

from jaxrl_vlm.envs.general_points.sampling import SUITS
from jaxrl_vlm.envs.general_points.task import gp_splits, make_task
from jaxrl_vlm.evaluation.evaluator import Evaluator

from scripted_policy import MEMORISED_OOD_REWARD, REPLY_REWARDS, ScriptedPolicyModel, host_feedback, scripted_reply
from tiny_models import MULTIMODAL_CHATML  # ChatML with an image placeholder (SmolLM2's own is text-only)

BATCH, EPISODES, MAX_NEW = 8, 10, 80  # the longest scripted reply is under 70 tokens with its EOS
VERIFY_ITER = 3  # the budget of every test that does not test the budget
# The spec's splits (§5) and the suits each shows (§1): GP-VL trains on black suits, visual OOD shows red ones.
SPLIT_SUITS = {"L": {"in_dist": "HSDC", "rule_ood": "HSDC"},
               "VL": {"in_dist": "SC", "rule_ood": "SC", "visual_ood": "HD", "recognition": "SC"}}
ALL_SPLITS = [(mode, split) for mode, splits in SPLIT_SUITS.items() for split in splits]
SPLIT_IDS = [f"{mode}-{split}" for mode, split in ALL_SPLITS]
RESULT_KEYS = {"split", "episodes", "success", "success_stderr", "mean_reward", "replies", "overflow", "outcomes"}
# the verifier's verdict (`GPTask.outcome_names`) on a reply of each scripted kind under the face-10 rule
KIND_OUTCOMES = {"correct": "correct", "no_solution": "wrong_value", "wrong_numbers": "wrong_numbers",
                 "illegal": "illegal_formula", "misread": "misread_cards", "memorised": "correct"}
RECOGNITION_KEYS = {"recognition_accuracy", "recognition_accuracy_stderr", "recognition_replies"}


@pytest.fixture(scope="module")
def evaluators(smollm2_tokenizer):
    """evaluators(mode, verify_iter) -> (scripted model, Evaluator over every split of the modality at that budget).
    One scripted model per modality and one evaluator per (modality, budget), made on first use: each split's
    rollout compiles once for the module."""
    models = {mode: ScriptedPolicyModel(smollm2_tokenizer, vision=mode == "VL") for mode in ("L", "VL")}
    cache = {}

    def get(mode, verify_iter):
        if (mode, verify_iter) not in cache:
            vision = mode == "VL"
            kwargs = {"template_kwargs": {"chat_template": MULTIMODAL_CHATML}} if vision else {}
            splits = {split: make_task(smollm2_tokenizer, split, language_only=not vision, verify_iter=verify_iter,
                                       **kwargs) for split in SPLIT_SUITS[mode]}
            cache[mode, verify_iter] = models[mode], Evaluator(models[mode], smollm2_tokenizer, splits)
        return cache[mode, verify_iter]

    return get


def evaluate(evaluators, mode, split, policy, *, episodes=EPISODES, verify_iter=VERIFY_ITER, seed=0):
    """(result, hands shown in the evaluated episodes) of one evaluation of `policy` on a split."""
    model, evaluator = evaluators(mode, verify_iter)
    model.reset(policy)
    result = evaluator.evaluate(split, episodes=episodes, batch_size=BATCH, max_new_tokens=MAX_NEW, seed=seed)
    assert None not in model.turns_asked, "the scripted model was shown a conversation it could not read"
    assert len(model.seen) >= episodes
    hands = model.seen[:episodes]
    assert all(face10 == face_cards_as_10(split) for _, _, face10 in hands), "the prompt states the split's rule"
    assert result["split"] == split and result["overflow"] == 0
    assert set(result) == RESULT_KEYS | (RECOGNITION_KEYS if mode == "VL" else set()), sorted(result)
    return result, hands


def face_cards_as_10(split):
    """The split's face rule (spec §5): J/Q/K are 11/12/13 on rule OOD only."""
    return split != "rule_ood"


def reward_of(kind, mode, face10):
    """Reward of a scripted reply kind (spec §4 table): GP-L does not check the cards; the face-10 answer is
    right under the face-10 rule only."""
    if kind == "memorised":
        return REPLY_REWARDS["correct"] if face10 else MEMORISED_OOD_REWARD
    if kind == "misread" and mode == "L":
        return REPLY_REWARDS["correct"]
    return REPLY_REWARDS[kind]


def stderr(p, n):
    return math.sqrt(p * (1 - p) / n)


def outcome_of(kind, mode, face10):
    """The verdict on a reply of a scripted kind: GP-L does not check the cards; the face-10 answer uses numbers the
    hand lacks under the 11/12/13 rule."""
    if kind == "misread" and mode == "L":
        return "correct"
    if kind == "memorised" and not face10:
        return "wrong_numbers"
    return KIND_OUTCOMES[kind]


def expected_numbers(kinds, mode, split, verify_iter):
    """The spec §5 numbers for episodes whose every reply is of kinds[i]: an episode succeeds on its first reply or
    fails after verify_iter replies (recognition: one reply); the mean reward is over every evaluated reply, and
    the outcomes count each reply's verdict (they sum to the replies). GP-VL also reports the recognition accuracy
    of every split: the fraction of evaluated replies that read the cards right (not -1.5), its standard error over
    those replies, and their count."""
    revise = split != "recognition"  # recognition: one reply per episode, verification off (spec §5)
    per_episode = [reward_of(kind, mode, face_cards_as_10(split)) for kind in kinds]
    rewards, outcomes = [], {name: 0 for name in ("correct", "partial", "wrong_value", "wrong_numbers",
                                                  "illegal_formula", "misread_cards")}
    for kind, r in zip(kinds, per_episode):
        replies = 1 if r == 5 or not revise else verify_iter
        rewards += [r] * replies
        outcomes[outcome_of(kind, mode, face_cards_as_10(split))] += replies
    n = len(kinds)
    p = sum(r == 5 for r in per_episode) / n
    out = {"success": p, "success_stderr": stderr(p, n), "mean_reward": float(np.mean(rewards)),
           "replies": len(rewards), "episodes": n, "overflow": 0, "outcomes": outcomes}
    if mode == "VL":
        q = 1 - sum(r == REPLY_REWARDS["misread"] for r in rewards) / len(rewards)
        out.update(recognition_accuracy=q, recognition_accuracy_stderr=stderr(q, len(rewards)),
                   recognition_replies=len(rewards))
    return out


def check(result, expected):
    for key, value in expected.items():
        assert result[key] == (value if key == "outcomes" else pytest.approx(value, abs=1e-9)), (key, result)
    assert sum(result["outcomes"].values()) == result["replies"]


def test_tasks_budget_and_splits(smollm2_tokenizer):
    """The tasks the evaluator runs: the spec's splits per modality, verify_iter replies per conversation except on
    recognition (one). Catches a recognition split that revises and a split list that lost a split."""
    assert set(gp_splits(True)) == set(SPLIT_SUITS["L"]) and set(gp_splits(False)) == set(SPLIT_SUITS["VL"])
    kwargs = {"template_kwargs": {"chat_template": MULTIMODAL_CHATML}}
    for split in SPLIT_SUITS["VL"]:
        env, _ = make_task(smollm2_tokenizer, split, language_only=False, verify_iter=5, **kwargs)
        assert (env.turns, env.conversations, env.vision) == (1 if split == "recognition" else 5, 1, True)
    with pytest.raises(ValueError, match="unknown GP split"):
        make_task(smollm2_tokenizer, "visual_ood", language_only=True)


@pytest.mark.parametrize("mode,split", ALL_SPLITS, ids=SPLIT_IDS)
def test_oracle_scores_one(evaluators, mode, split):
    """A policy that always answers right under the prompt's face rule: success (and GP-VL recognition accuracy)
    1.0, stderr 0, mean reward 5, one reply per episode; the GP-VL images show the split's suits. Catches success
    computed as 1 - successes/episodes, padding rows counted as successes (> 1), a split scored with another face
    rule than its prompt states, and a VL split rendering the wrong suit set."""
    result, hands = evaluate(evaluators, mode, split, lambda conv: "correct")
    check(result, expected_numbers(["correct"] * EPISODES, mode, split, VERIFY_ITER))
    if mode == "VL":
        assert {SUITS[s] for _, suits, _ in hands for s in suits} <= set(SPLIT_SUITS[mode][split])


@pytest.mark.parametrize("mode,split", ALL_SPLITS, ids=SPLIT_IDS)
def test_always_wrong_scores_zero(evaluators, mode, split):
    """A policy that always reads the cards right but gives a formula of the wrong value (-1): success 0.0 with
    verify_iter replies per episode and mean reward -1; its recognition accuracy is 1.0 (the cards were right),
    on the recognition split from one reply per episode. Catches success = 1 - successes/episodes, recognition =
    misread/replies (or judged by success), padding rows counted as replies, and a recognition split that
    revises."""
    result, _ = evaluate(evaluators, mode, split, lambda conv: "no_solution")
    check(result, expected_numbers(["no_solution"] * EPISODES, mode, split, VERIFY_ITER))


def fraction_kind(ranks, mode):
    """Right exactly on hands whose first card has an odd rank; otherwise one failure kind picked by the rank sum
    (GP-VL failures include misread cards, -1.5)."""
    if ranks[0] % 2 == 1:
        return "correct"
    fails = ("no_solution", "wrong_numbers", "illegal") + (("misread",) if mode == "VL" else ())
    return fails[sum(ranks) % len(fails)]


@pytest.mark.parametrize("mode,split", ALL_SPLITS, ids=SPLIT_IDS)
def test_policy_right_on_a_subset_of_hands(evaluators, mode, split):
    """A policy right on a known subset of hands: success = that fraction of the evaluated episodes, stderr =
    sqrt(p(1-p)/n), mean reward and reply count as the reward table implies for its replies. On the recognition
    split it misreads a known subset: accuracy = 1 - misread/replies (GP-VL reports it on every split, counted
    over every evaluated reply). Catches padding rows counted (their hands are others), a wrong standard error,
    rewards of finished episodes' later turns counted (as 0) in the mean, and the misread count taken from other
    rewards."""
    if split == "recognition":  # misread on the subset, right cards (right or wrong formula) elsewhere
        def kind(ranks):
            return "misread" if ranks[0] % 2 == 1 else ("correct", "no_solution")[sum(ranks) % 2]
    else:
        def kind(ranks):
            return fraction_kind(ranks, mode)
    result, hands = evaluate(evaluators, mode, split, lambda conv: kind(conv.ranks))
    expected = expected_numbers([kind(ranks) for ranks, _, _ in hands], mode, split, VERIFY_ITER)
    p = expected["recognition_accuracy" if split == "recognition" else "success"]
    assert 0 < p < 1, "the draw must mix both outcomes for this test to mean something"
    assert expected["mean_reward"] != 0, "a zero mean would not change if finished episodes' zeros were counted"
    if mode == "VL" and split != "recognition":
        assert 0 < expected["recognition_accuracy"] < 1, "the draw must misread some hands"
    check(result, expected)


def reviser(mode):
    """Wrong (-1) on the first reply; on a revision turn right iff the turn shows its own previous reply and the
    verifier's feedback on it (else wrong again)."""
    def policy(conv):
        if conv.turn == 0:
            return "no_solution"
        previous = scripted_reply("no_solution", conv.ranks, conv.face_cards_as_10)
        shown = conv.replies[-1] == previous and conv.feedbacks[-1] == host_feedback(previous, conv, mode == "L")
        return "correct" if shown else "no_solution"
    return policy


@pytest.mark.parametrize("mode,split", [("L", "in_dist"), ("VL", "rule_ood")], ids=["L-in_dist", "VL-rule_ood"])
def test_sequential_revision(evaluators, mode, split):
    """Wrong first, right on revision: success 1.0 with a budget of VERIFY_ITER (two replies per episode, mean
    reward (-1 + 5) / 2) and 0.0 with verify_iter=1 (one reply, -1). Catches evaluation without revision turns, a
    revision turn that does not show the reply and the verifier's feedback (the conversation continued in the KV
    cache must hold both), and a verify_iter that is not applied."""
    model, _ = evaluators(mode, VERIFY_ITER)
    result, _ = evaluate(evaluators, mode, split, reviser(mode))
    check(result, {"success": 1.0, "success_stderr": 0.0, "replies": 2 * EPISODES,
                   "mean_reward": (REPLY_REWARDS["no_solution"] + REPLY_REWARDS["correct"]) / 2})
    assert sorted(set(model.turns_asked)) == [0, 1]
    result, _ = evaluate(evaluators, mode, split, reviser(mode), verify_iter=1)
    check(result, {"success": 0.0, "success_stderr": 0.0, "replies": EPISODES,
                   "mean_reward": REPLY_REWARDS["no_solution"]})


def test_recognition_split_asks_one_reply_per_episode(evaluators):
    """Recognition (verification off): with a budget of 5, a policy that would succeed on revision is asked once per
    episode and never shown a revision turn; its accuracy counts the cards only (right here: 1.0) and it does not
    succeed. Catches a recognition split that revises or counts several replies per episode."""
    model, _ = evaluators("VL", 5)
    result, _ = evaluate(evaluators, "VL", "recognition", reviser("VL"), verify_iter=5)
    check(result, {"recognition_accuracy": 1.0, "recognition_accuracy_stderr": 0.0, "recognition_replies": EPISODES,
                   "replies": EPISODES, "mean_reward": REPLY_REWARDS["no_solution"], "success": 0.0})
    assert set(model.turns_asked) == {0}


@pytest.mark.parametrize("mode", ["L", "VL"])
def test_memorising_policy_fails_rule_ood(evaluators, mode):
    """A policy that always counts J/Q/K as 10 succeeds on every in-distribution episode and on no rule-OOD one
    (every OOD hand holds a face card, so its formula uses 10 more often than the hand holds it and leaves the face
    value unused: -2 - 2 per reply, spec §4.5). Catches the env stepped with rule-OOD params scoring face cards as
    10, OOD hands drawn without a face card, and (GP-VL) the OOD rule lost with the VL params."""
    memorised = lambda conv: "memorised"
    result, _ = evaluate(evaluators, mode, "in_dist", memorised)
    check(result, {"success": 1.0, "mean_reward": REPLY_REWARDS["correct"]})
    result, hands = evaluate(evaluators, mode, "rule_ood", memorised)
    assert all(max(ranks) >= 11 for ranks, _, _ in hands)
    check(result, {"success": 0.0, "success_stderr": 0.0, "replies": VERIFY_ITER * EPISODES,
                   "mean_reward": MEMORISED_OOD_REWARD})
    assert result["outcomes"]["wrong_numbers"] == VERIFY_ITER * EPISODES  # the memorisation shows as wrong numbers
