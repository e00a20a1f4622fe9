"""The on-device multi-turn rollout (`jaxrl_vlm.rollout`) of GeneralPoints (`GPTask`) against the host: rewards equal
the Python verifier's on the same replies, and each conversation in the KV cache is exactly what the tokenizer's
chat template renders for it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.general_points import prompt_tokens, prompts, verifier
from jaxrl_vlm.envs.general_points.solver import solutions
from jaxrl_vlm.envs.general_points.task import make_task
from jaxrl_vlm.models.layers import KVCache
from jaxrl_vlm.models.token_bytes import token_byte_table
from scripted_policy import token_cache, write_tokens

TURNS, MAX_NEW, EPISODES = 3, 64, 8


@dataclasses.dataclass(frozen=True)
class ScriptedDecoder:
    """A `DecodeModel` that answers every turn of row b with the token ids params[b] (then EOS), whatever it is asked.

    It keeps the ids written to each cache slot in cache.k, finds the last generation prompt (`gen_prompt` ids) in
    the row's history and forces the next scripted token by its offset from there."""

    vocab: int
    eos: int
    gen_prompt: tuple[int, ...]

    def decode_params(self, params):
        return params

    def init_cache(self, batch: int, capacity: int) -> KVCache:
        return token_cache(batch, capacity)

    def step(self, params, input_ids, token_mask, cache, extra):
        del extra
        cache, ids = write_tokens(cache, input_ids, token_mask)
        valid = cache.valid
        order = jnp.argsort(~valid, axis=1, stable=True)
        history = jnp.take_along_axis(ids, order, axis=1)
        count = valid.sum(1)
        p = len(self.gen_prompt)
        starts = jnp.arange(history.shape[1])
        windows = jnp.stack([jnp.roll(history, -i, axis=1) for i in range(p)], axis=-1)
        hit = jnp.all(windows == jnp.asarray(self.gen_prompt), axis=-1) & (starts + p <= count[:, None])
        last = jnp.max(jnp.where(hit, starts, -1), axis=1)
        offset = count - (last + p)
        script = params
        forced = jnp.take_along_axis(script, jnp.clip(offset, 0, script.shape[1] - 1)[:, None], axis=1)[:, 0]
        forced = jnp.where(offset < script.shape[1], forced, self.eos)
        return jax.nn.one_hot(forced, self.vocab) * 100.0, cache


def scripted_replies(ranks: np.ndarray) -> list[str]:
    """Per hand: a correct answer, a wrong-number answer, an illegal one, or a wrong formula (cycling). Every other
    correct answer stops right after the formula's closing quote: without its last token (the quote) it is illegal,
    so a reply scored short of its end shows (the full reply's last token, `}`, changes no reward)."""
    replies = []
    for i, hand in enumerate(ranks.tolist()):
        numbers = prompts.card_numbers(hand, face_cards_as_10=True)
        kind = i % 4
        if kind == 0:
            formula = solutions(numbers)[0]
        elif kind == 1:
            formula = f"{numbers[0]}+{numbers[1]}+77"
        elif kind == 2:
            formula = "twenty four"
        else:
            formula = "+".join(str(n) for n in numbers)
        reply = prompts.expert_response(hand, formula, face_cards_as_10=True)
        replies.append(reply[:reply.rindex(",")] if i % 8 == 4 else reply)
    return replies


@pytest.fixture(scope="module")
def rolled_out(smollm2_tokenizer):
    """(tokenizer, hands, episodes of the one conversation per GP episode as host arrays [B, T, ...], compact ids,
    mask, eos) of one rollout of the GP-L in-distribution task with a scripted decoder."""
    tokenizer = smollm2_tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    env, env_params = make_task(tokenizer, "in_dist", language_only=True, verify_iter=TURNS, feedback_tokens=64)
    assert env.turns == TURNS and env.conversations == 1
    gen_prompt = tuple(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    state = protocol.reset_batch(env, jax.random.key(3), env_params, EPISODES)
    ranks = np.asarray(state.ranks)
    replies = scripted_replies(ranks)
    script = np.full((EPISODES, MAX_NEW), eos, np.int32)
    for b, reply in enumerate(replies):
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"][:MAX_NEW - 1]
        script[b, :len(ids)] = ids
    decoder = ScriptedDecoder(len(tokenizer), eos, gen_prompt)
    episodes = rollout_lib.rollout(env, decoder, jnp.asarray(script), env_params, token_byte_table(tokenizer, "empty"),
                                   state, jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0),
                                   jnp.asarray([eos], jnp.int32), max_new_tokens=MAX_NEW, pad_id=0)
    capacity = rollout_lib.rollout_shapes(env, MAX_NEW).capacity
    assert episodes.slot_tokens.shape == (EPISODES, 1, capacity)
    ids, mask = rollout_lib.compact(episodes.slot_tokens[:, 0], episodes.slot_valid[:, 0], capacity, 0)
    ep = jax.device_get(episodes)
    # GP: one conversation per episode, so drop the conversation axis R = 1
    conv = ep._replace(**{f: getattr(ep, f)[:, 0] for f in ("slot_tokens", "slot_valid", "reply_tokens",
                                                               "reply_len", "reply_start", "sample_logp", "reward",
                                                               "turn_valid")})
    return tokenizer, ranks, conv, np.asarray(ids), np.asarray(mask), eos


def test_rewards_equal_the_python_verifier(rolled_out):
    """Every played turn's reward is the host verifier's on the decoded reply; unplayed turns are empty; success is
    a reply scoring 5, which ends the episode, and a failing episode uses its whole budget, then ends truncated
    (the forced step after the budget). Catches a reply scored short of its end, replies scored against another
    row's hand, an env state that does not advance (episodes never end), and a rollout that goes on after
    success."""
    tokenizer, ranks, ep, _, _, eos = rolled_out
    seen = set()
    for b in range(len(ranks)):
        for t in range(TURNS):
            if not ep.turn_valid[b, t]:
                assert ep.reward[b, t] == 0 and ep.reply_len[b, t] == 0
                continue
            tokens = ep.reply_tokens[b, t, :ep.reply_len[b, t]].tolist()
            assert tokens[-1] == eos
            text = tokenizer.decode(tokens[:-1], clean_up_tokenization_spaces=False)
            reward, _ = verifier.score_response(text, ranks[b].tolist(), face_cards_as_10=True, language_only=True)
            assert ep.reward[b, t] == reward, (b, t, text)
            seen.add(float(reward))
    assert len(seen) >= 3, seen  # the script reaches success and several failure messages
    succeeded = ep.reward.max(axis=1) == 5
    np.testing.assert_array_equal(ep.success, succeeded)
    # a success ends the episode; every failing episode uses its whole budget
    np.testing.assert_array_equal(ep.turn_valid.sum(axis=1), np.where(succeeded, 1, TURNS))
    np.testing.assert_array_equal(ep.state.done, np.ones(len(ranks), bool))
    np.testing.assert_array_equal(ep.state.truncated, ~succeeded)
    assert not ep.overflow.any()


def test_conversations_are_the_chat_template_rendering(rolled_out):
    """The compacted cache of each conversation decodes to the chat template's rendering of the prompt, the replies
    and the verifier's feedback on each (the last reply without its stop token), and reply_start points at each
    reply in it, right after the generation prompt. Catches a stop token written before the template's assistant
    tail, feedback of another row's reply, and reply_start off by one. (Every scripted reply here ends with a stop
    token, so the pending-token write of a reply cut at max_new_tokens is test_rollout_logprobs' to check.)"""
    tokenizer, ranks, ep, ids, mask, eos = rolled_out
    for b in range(len(ranks)):
        turns = int(ep.turn_valid[b].sum())
        replies, feedbacks = [], []
        for t in range(turns):
            tokens = ep.reply_tokens[b, t, :ep.reply_len[b, t] - 1].tolist()
            start = ep.reply_start[b, t]
            np.testing.assert_array_equal(ids[b, start:start + len(tokens)], tokens)
            replies.append(tokenizer.decode(tokens, clean_up_tokenization_spaces=False))
            feedbacks.append(verifier.score_response(replies[-1], ranks[b].tolist(), face_cards_as_10=True,
                                                     language_only=True)[1])
        messages = prompt_tokens.gp_conversation(ranks[b].tolist(), replies[:-1], feedbacks[:-1],
                                                 face_cards_as_10=True, language_only=True)
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expected += replies[-1]
        got = tokenizer.decode(ids[b, :mask[b].sum()].tolist(), clean_up_tokenization_spaces=False)
        assert got == expected
        # the value of turn t is read at the last token of its prompt: the generation prompt's newline
        for t in range(turns):
            assert tokenizer.decode([ids[b, ep.reply_start[b, t] - 1]]) == "\n"


# ChatML whose message contents are trimmed, as Llama 3's template trims them (`content | trim`)
TRIMMING_CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim"
                   " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")


def test_trimming_template_turns_show_the_rerendered_replies(smollm2_tokenizer):
    """With a template that trims contents and `trim` on (evaluation's setting), every revision turn sees the
    conversation the reference re-renders: earlier replies trimmed ("\\n  reply \\n" -> "reply"), positions without
    the dropped slots; the last reply stays as sampled. Checked on the final conversations and the last turn's
    reply_start (the count of tokens before it). Fails when the reply is continued untrimmed (trim=None)."""
    from jaxrl_vlm.envs.chat import reply_trim_tables

    tokenizer = smollm2_tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    env, env_params = make_task(tokenizer, "in_dist", language_only=True, verify_iter=TURNS, feedback_tokens=64,
                                template_kwargs={"chat_template": TRIMMING_CHATML})
    assert env.trims_replies
    gen_prompt = tuple(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    state = protocol.reset_batch(env, jax.random.key(5), env_params, EPISODES)
    ranks = np.asarray(state.ranks)
    replies = ["\n  " + reply + " \n" for reply in scripted_replies(ranks)]
    script = np.full((EPISODES, MAX_NEW), eos, np.int32)
    for b, reply in enumerate(replies):
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"][:MAX_NEW - 1]
        script[b, :len(ids)] = ids
    episodes = jax.device_get(rollout_lib.rollout(
        env, ScriptedDecoder(len(tokenizer), eos, gen_prompt), jnp.asarray(script), env_params,
        token_byte_table(tokenizer, "empty"), state, jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0),
        jnp.asarray([eos], jnp.int32), reply_trim_tables(tokenizer), max_new_tokens=MAX_NEW, pad_id=0))
    ids, mask = rollout_lib.compact(episodes.slot_tokens[:, 0], episodes.slot_valid[:, 0],
                                    episodes.slot_tokens.shape[-1], 0)
    ids, lengths = np.asarray(ids), np.asarray(mask).sum(-1)
    continued = 0
    for b in range(EPISODES):
        turns = int(episodes.turn_valid[b, 0].sum())
        texts, feedbacks = [], []
        for t in range(turns):
            tokens = episodes.reply_tokens[b, 0, t, :episodes.reply_len[b, 0, t] - 1].tolist()
            texts.append(tokenizer.decode(tokens, clean_up_tokenization_spaces=False))
            feedbacks.append(verifier.score_response(texts[-1], ranks[b].tolist(), face_cards_as_10=True,
                                                     language_only=True)[1])
            history = prompt_tokens.gp_conversation(ranks[b].tolist(), texts[:-1], feedbacks[:-1],
                                                    face_cards_as_10=True, language_only=True)
        rendered = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True,
                                                 chat_template=TRIMMING_CHATML)
        got = tokenizer.decode(ids[b, :lengths[b]].tolist(), clean_up_tokenization_spaces=False)
        assert got == rendered + texts[-1], b
        start = int(episodes.reply_start[b, 0, turns - 1])
        assert tokenizer.decode(ids[b, :start].tolist(), clean_up_tokenization_spaces=False) == rendered, b
        continued += turns > 1
    assert continued >= EPISODES // 2 and replies[0] != replies[0].strip()
