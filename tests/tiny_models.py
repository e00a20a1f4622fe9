"""Tiny test checkpoints: a random Llama over a small byte-level BPE vocabulary trained on GP conversations.

A real tokenizer's 49k vocabulary makes the LM head dominate a tiny model's cost; a 600-token BPE trained on the
task's own text keeps training tests fast while exercising the same chat-template and tokenizer code paths.
"""
from __future__ import annotations

from jaxrl_vlm.data.gp_expert.examples import expert_examples


def tiny_gp_tokenizer(chat_template: str, vocab_size: int = 600):
    """A PreTrainedTokenizerFast (byte-level BPE, SmolLM2 special tokens and chat template) trained on GP text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    examples = expert_examples(64, 0, language_only=True, face_cards_as_10=True, suits="mixed")
    texts = list(examples.prompts) + list(examples.responses) + ["You failed this trial because illegal characters."]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=chat_template)
