"""SFT data: the loss mask of a hand-built conversation and the batcher's determinism, sharding and resume."""
import numpy as np
import pytest

from jaxrl_vlm.data.batching import BatcherState, SFTBatcher
from jaxrl_vlm.data.conversation import TokenizedConversation, tokenize_conversation


def test_loss_mask_covers_exactly_the_assistant_replies(smollm2_tokenizer):
    tok = smollm2_tokenizer
    conversation = [
        {"role": "user", "content": "Cards: ['A', '2', '3', '4']"},
        {"role": "assistant", "content": "first reply"},
        {"role": "user", "content": "You failed this trial because illegal characters."},
        {"role": "assistant", "content": "second reply"},
    ]
    tokenized = tokenize_conversation(tok, conversation)
    ids, mask = tokenized.input_ids, tokenized.loss_mask
    assert tokenized.image is None
    supervised = tok.decode(ids[mask].tolist())
    assert supervised == "first reply<|im_end|>\nsecond reply<|im_end|>\n"
    assert tok.decode(ids.tolist()) == tok.apply_chat_template(conversation, tokenize=False)
    prompt = tok.decode(ids[~mask].tolist())
    assert "Cards: ['A', '2', '3', '4']" in prompt and "first reply" not in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_conversation_must_end_with_assistant(smollm2_tokenizer):
    with pytest.raises(ValueError, match="end with an assistant"):
        tokenize_conversation(smollm2_tokenizer, [{"role": "user", "content": "hi"}])


def _examples(n):
    return [TokenizedConversation(np.arange(i % 5 + 2, dtype=np.int32) + i, np.arange(i % 5 + 2) > 0) for i in range(n)]


def _batcher(examples, **kw):
    args = dict(global_batch_size=4, seq_len=8, pad_id=-1, seed=7)
    args.update(kw)
    return SFTBatcher(examples.__getitem__, len(examples), **args)


def test_batcher_is_deterministic_and_covers_an_epoch():
    examples = _examples(10)
    a = [next(_batcher(examples)) for _ in range(1)]
    b = [next(_batcher(examples)) for _ in range(1)]
    np.testing.assert_array_equal(a[0].input_ids, b[0].input_ids)
    batcher = _batcher(examples)
    firsts = [next(batcher).input_ids[:, 0] for _ in range(2)]
    assert batcher.state == BatcherState(1, 0)
    assert len(set(np.concatenate(firsts).tolist())) == 8  # 8 distinct examples, tail of 2 dropped


def test_hosts_read_disjoint_halves_of_each_global_batch():
    examples = _examples(12)
    whole = next(_batcher(examples)).input_ids
    halves = [next(_batcher(examples, host_index=h, num_hosts=2)).input_ids for h in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_resume_reads_the_same_batches():
    examples = _examples(12)
    straight = _batcher(examples)
    run = [next(straight).input_ids for _ in range(5)]
    first = _batcher(examples)
    for _ in range(2):
        next(first)
    resumed = _batcher(examples)
    resumed.restore(first.state)
    for expected in run[2:]:
        np.testing.assert_array_equal(next(resumed).input_ids, expected)


def test_padding_and_bad_arguments():
    batch = next(_batcher(_examples(4), global_batch_size=4))
    assert (batch.input_ids[~batch.attention_mask] == -1).all()
    assert not (batch.loss_mask & ~batch.attention_mask).any()
    with pytest.raises(ValueError, match="divisible"):
        _batcher(_examples(8), num_hosts=3)
    with pytest.raises(ValueError, match="cannot fill"):
        _batcher(_examples(3))
    with pytest.raises(ValueError, match="outside"):
        _batcher(_examples(8)).restore((0, 5))
    with pytest.raises(ValueError, match="exceed data.seq_len=1"):
        next(_batcher(_examples(8), seq_len=1))


def test_replies_are_supervised_as_written_under_a_trimming_template(smollm2_tokenizer):
    """With a template that trims contents (as Llama 3's does), each reply is supervised untrimmed, as the reference's
    `{reply}<|eot_id|>\\n` target (training.md §3.2), followed by the template's end of turn; the prompts are the
    template's rendering (earlier replies trimmed there). Catches the template's trimmed reply as the target."""
    import copy

    from test_ppo_rollout import TRIMMING_CHATML

    tok = copy.copy(smollm2_tokenizer)
    tok.chat_template = TRIMMING_CHATML
    conversation = [{"role": "user", "content": "  Cards: ['A', '2', '3', '4']\n"},
                    {"role": "assistant", "content": "\n{\"formula\": \"1*2*3*4\"}\n"},
                    {"role": "user", "content": "You failed this trial because reasons."},
                    {"role": "assistant", "content": " second reply "}]
    tokenized = tokenize_conversation(tok, conversation)
    ids, mask = tokenized.input_ids, tokenized.loss_mask
    assert tok.decode(ids[mask].tolist()) == "\n{\"formula\": \"1*2*3*4\"}\n<|im_end|>\n second reply <|im_end|>\n"
    prompt = tok.decode(ids[~mask].tolist())
    assert prompt.startswith("<|im_start|>user\nCards:") and "because reasons.<|im_end|>" in prompt
