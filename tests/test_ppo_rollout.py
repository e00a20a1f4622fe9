"""The on-device sequential-revision rollout against the host: rewards equal the Python verifier's on the same
replies, and each conversation in the KV cache is exactly what the tokenizer's chat template renders for it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_vlm.envs.general_points import env as gp_env
from jaxrl_vlm.envs.general_points import prompt_tokens, prompts, verifier
from jaxrl_vlm.envs.general_points.solver import solutions
from jaxrl_vlm.envs.general_points.token_bytes import token_byte_table
from jaxrl_vlm.models.layers import KVCache
from jaxrl_vlm.training import rollout as rollout_lib
from scripted_policy import token_cache, write_tokens

TURNS, MAX_NEW = 3, 64


@dataclasses.dataclass(frozen=True)
class ScriptedDecoder:
    """A `DecodeModel` that answers every turn of row b with the token ids extra[b] (then EOS), whatever it is asked.

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
        del params
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
        script = extra
        forced = jnp.take_along_axis(script, jnp.clip(offset, 0, script.shape[1] - 1)[:, None], axis=1)[:, 0]
        forced = jnp.where(offset < script.shape[1], forced, self.eos)
        return jax.nn.one_hot(forced, self.vocab) * 100.0, cache


def scripted_replies(ranks: np.ndarray) -> list[str]:
    """Per hand: a correct answer, a wrong-number answer, an illegal one, or a wrong formula (cycling)."""
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
        replies.append(prompts.expert_response(hand, formula, face_cards_as_10=True))
    return replies


@pytest.fixture(scope="module")
def rolled_out(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    codec = prompt_tokens.build_prompt_codec(tokenizer, language_only=True, face_cards_as_10=True,
                                             fragment_texts=gp_env.feedback_fragment_texts())
    gen_prompt = tuple(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    env_params = gp_env.make_params(verify_iter=TURNS)
    _, state = gp_env.reset_batch(jax.random.key(3), env_params, 8)
    ranks = np.asarray(state.ranks)
    replies = scripted_replies(ranks)
    script = np.full((8, MAX_NEW), eos, np.int32)
    for b, reply in enumerate(replies):
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"][:MAX_NEW - 1]
        script[b, :len(ids)] = ids
    prompt = prompt_tokens.prompt_ids(codec, state.ranks, width=256, pad_id=0, padding_side="left")
    shapes = rollout_lib.RolloutShapes(turns=TURNS, max_new_tokens=MAX_NEW, prompt_width=256,
                                       suffix_width=rollout_lib.suffix_width(codec, 64))
    decoder = ScriptedDecoder(len(tokenizer), eos, gen_prompt)
    episodes = rollout_lib.rollout(decoder, None, codec, env_params, token_byte_table(tokenizer, "empty"), state,
                                   prompt, jnp.asarray(script), jax.random.key(0), jnp.float32(0.0),
                                   jnp.float32(1.0), jnp.asarray([eos], jnp.int32), shapes=shapes, pad_id=0)
    ids, mask = rollout_lib.compact(episodes.slot_tokens, episodes.slot_valid, shapes.capacity, 0)
    return tokenizer, ranks, jax.device_get(episodes), np.asarray(ids), np.asarray(mask), eos


def test_rewards_equal_the_python_verifier(rolled_out):
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


def test_conversations_are_the_chat_template_rendering(rolled_out):
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
