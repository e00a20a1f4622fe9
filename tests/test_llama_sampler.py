"""KV-cache sampler on a tiny random Llama: cache decode vs full recomputation, multi-turn continuation vs
prefilling the whole conversation, and seeded sampling."""
import dataclasses

import jax
import numpy as np
import pytest

from jaxrl_vlm.models import api
from llama_test_utils import left_padded_batch, tiny_hf_llama

N_NEW = 10


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tiny_sampler"))
    tiny_hf_llama(directory, tied=False, seed=3)
    base = api.load(directory)
    ids, mask = left_padded_batch(np.random.RandomState(0), [5, 9, 2], base.config.vocab_size)
    # Make a token that row 0 greedily generates mid-way the EOS, so rows stop at different steps.
    first = api.generate(base, ids, mask, max_new_tokens=N_NEW)
    eos = int(first[0, 3])
    config = dataclasses.replace(base.config, eos_token_ids=(eos,), pad_token_id=0)
    return api.LlamaModel(config, base.params)


@pytest.fixture(scope="module")
def prompts(model):
    return left_padded_batch(np.random.RandomState(0), [5, 9, 2], model.config.vocab_size)


def _full_logprobs(model, ids, mask, tokens, lengths):
    """Log-softmax of full-recomputation logits at the positions that predicted each generated token."""
    gen_mask = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int32)
    logits = model.logits(np.concatenate([ids, tokens], 1), np.concatenate([mask, gen_mask], 1))
    pred = logits[:, ids.shape[1] - 1:-1]
    return np.asarray(jax.nn.log_softmax(pred, axis=-1)), gen_mask.astype(bool)


def test_cache_decode_matches_full_recomputation(model, prompts):
    ids, mask = prompts
    out = api.sample(model, ids, mask, max_new_tokens=N_NEW)
    assert out.lengths.tolist() != [N_NEW] * 3, "EOS should stop some row early"
    logp, valid = _full_logprobs(model, ids, mask, out.tokens, out.lengths)
    np.testing.assert_array_equal(np.where(valid, logp.argmax(-1), model.pad_id), out.tokens)
    chosen = np.take_along_axis(logp, out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.where(valid, chosen, 0.0), out.logprobs, atol=1e-4)
    eos = model.eos_token_ids[0]
    for row, n in enumerate(out.lengths):
        assert (out.tokens[row, :n - 1] != eos).all()
        if n < N_NEW:
            assert out.tokens[row, n - 1] == eos and (out.tokens[row, n:] == model.pad_id).all()


def test_continuation_equals_prefilling_the_conversation(model, prompts):
    ids, mask = prompts
    vocab = model.config.vocab_size
    first = api.sample(model, ids, mask, max_new_tokens=N_NEW, capacity=8)
    feedback, feedback_mask = left_padded_batch(np.random.RandomState(1), [4, 1, 6], vocab)
    second = api.continue_sampling(model, first.state, feedback, feedback_mask, max_new_tokens=N_NEW)

    rows = []
    for r in range(len(ids)):
        rows.append(np.concatenate([ids[r][mask[r] == 1], first.tokens[r, :first.lengths[r]],
                                    feedback[r][feedback_mask[r] == 1]]))
    width = max(len(x) for x in rows)
    conv = np.zeros((len(rows), width), np.int32)
    conv_mask = np.zeros_like(conv)
    for r, x in enumerate(rows):
        conv[r, width - len(x):] = x
        conv_mask[r, width - len(x):] = 1
    fresh = api.sample(model, conv, conv_mask, max_new_tokens=N_NEW)
    np.testing.assert_array_equal(second.tokens, fresh.tokens)
    np.testing.assert_array_equal(second.lengths, fresh.lengths)
    np.testing.assert_allclose(second.logprobs, fresh.logprobs, atol=1e-4)


def test_sampling_is_deterministic_by_seed(model, prompts):
    ids, mask = prompts
    kwargs = dict(max_new_tokens=N_NEW, temperature=1.0, top_p=0.9)
    a = api.sample(model, ids, mask, seed=0, **kwargs)
    b = api.sample(model, ids, mask, seed=0, **kwargs)
    c = api.sample(model, ids, mask, seed=1, **kwargs)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (a.tokens != c.tokens).any()
    greedy = api.generate(model, ids, mask, max_new_tokens=N_NEW)
    assert (a.tokens != greedy).any()
    nucleus_of_one = api.generate(model, ids, mask, max_new_tokens=N_NEW, temperature=1.0, top_p=1e-6, seed=5)
    np.testing.assert_array_equal(nucleus_of_one, greedy)


def test_sample_rejects_bad_arguments(model, prompts):
    ids, mask = prompts
    with pytest.raises(ValueError, match="top_p"):
        api.sample(model, ids, mask, max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        api.sample(model, ids, mask, max_new_tokens=0)
