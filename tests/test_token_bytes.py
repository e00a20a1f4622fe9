"""Token ids -> bytes table against the real SmolLM2 tokenizer's decode."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_vlm.envs.general_points.prompts import expert_response, user_message
from jaxrl_vlm.models.token_bytes import token_byte_table, tokens_to_bytes
from jaxrl_vlm.envs.general_points.verifier import read_reply

@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


def _decode(tokenizer, ids, skip):
    return tokenizer.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


def test_every_single_token_matches_decode(tokenizer):
    table = token_byte_table(tokenizer)
    assert table.bytes.shape[0] == len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    mismatched = [i for i, text in enumerate(texts)
                  if read_reply(bytes(table.bytes[i, : table.lengths[i]])) != text]
    assert not mismatched, mismatched[:10]


@pytest.mark.parametrize("special", ["text", "empty"])
def test_token_sequences_match_decode(tokenizer, special):
    table = token_byte_table(tokenizer, special_tokens=special)
    rng = np.random.default_rng(0)
    rows, steps = 8, 48
    ids = rng.integers(0, len(tokenizer), size=(rows, steps)).astype(np.int32)
    ids[:, ::7] = rng.integers(0, 20, size=ids[:, ::7].shape)  # special and added tokens
    text = expert_response([13, 1, 10, 2], "(10+2)*(1+1)", face_cards_as_10=True) + " é 🂡 ∑"
    prompt_ids = tokenizer.encode(user_message([1, 2, 3, 4], face_cards_as_10=True, language_only=True) + text)
    ids[0, :] = prompt_ids[:steps]
    lengths = rng.integers(0, steps + 1, size=rows).astype(np.int32)
    lengths[0] = steps
    out, out_len = tokens_to_bytes(jnp.asarray(ids), jnp.asarray(lengths), table)
    assert out.shape == (rows, steps * table.bytes.shape[1])
    out, out_len = np.asarray(out), np.asarray(out_len)
    for row in range(rows):
        expected = _decode(tokenizer, ids[row, : lengths[row]].tolist(), skip=special == "empty")
        assert read_reply(bytes(out[row, : out_len[row]])) == expected
        assert not out[row, out_len[row]:].any()
    cut, cut_len = tokens_to_bytes(jnp.asarray(ids), jnp.asarray(lengths), table, width=40)
    assert cut.shape == (rows, 40) and np.array_equal(np.asarray(cut_len), out_len)
    assert np.array_equal(np.asarray(cut), out[:, :40])
    short = tokenizer.encode(text)
    out, out_len = tokens_to_bytes(jnp.asarray([short]), jnp.asarray([len(short)]), table)
    assert bytes(np.asarray(out)[0, : int(out_len[0])]) == text.encode()


def test_rejects_non_byte_level_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    word_level = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")))
    with pytest.raises(ValueError, match="byte-level"):
        token_byte_table(word_level)
    with pytest.raises(ValueError, match="special_tokens"):
        token_byte_table(word_level, special_tokens="skip")


def test_feedback_fragments_to_tokens_decode_to_the_feedback(tokenizer):
    import jax.numpy as jnp

    from jaxrl_vlm.models.token_bytes import fragment_token_table, fragments_to_tokens
    from jaxrl_vlm.envs.general_points.verifier import score_response
    from jaxrl_vlm.envs.general_points.verifier_device import (
        device_solution_table,
        encode_replies,
        feedback_fragment_texts,
        score_bytes,
    )

    replies = ['"formula": "1*2*3*4"', '"formula": "))+7+77+7"', '"formula": "(1+3)*(2+4"', '"formula": "4*4"',
               '"formula": "1+2+3+4"', "no formula", '"cards": [A, 2, 3, 5]']
    rows = 64  # the shape the device verifier tests compile, so a full test run compiles it once
    reply, reply_len = encode_replies(replies + [""] * (rows - len(replies)), 256)
    lang = jnp.asarray([True] * 6 + [False] * (rows - 6))
    out = score_bytes(jnp.asarray(reply), jnp.asarray(reply_len), jnp.asarray([[1, 2, 3, 4]] * rows),
                      jnp.ones((rows,), bool), lang, device_solution_table(24))
    table = fragment_token_table(tokenizer, feedback_fragment_texts())
    tokens, lengths = fragments_to_tokens(out.fragments, out.num_fragments, table)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    for i, text in enumerate(replies):
        feedback = score_response(text, [1, 2, 3, 4], face_cards_as_10=True, language_only=i < 6)[1]
        assert _decode(tokenizer, tokens[i, : lengths[i]].tolist(), skip=False) == feedback
