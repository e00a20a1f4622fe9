"""Tiny test checkpoints: a random Llama over a small byte-level BPE vocabulary trained on GP conversations.

A real tokenizer's 49k vocabulary makes the LM head dominate a tiny model's cost; a 600-token BPE trained on the
task's own text keeps training tests fast while exercising the same chat-template and tokenizer code paths.
"""
from __future__ import annotations

from jaxrl_vlm.data.gp_expert.examples import expert_examples
from jaxrl_vlm.planning.run import MULTIMODAL_CHATML  # ChatML writing <|image|> for image parts


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




def save_tiny_gp_mllama(directory: str, seed: int = 0, gate: float = 0.5) -> None:
    """A tiny random MllamaForConditionalGeneration (28 px tiles) with a GP tokenizer whose chat template writes
    `<|image|>` for image parts; the image token is the first of the 8 extra embedding rows, as in the 11B. Every
    scalar gate (text cross-attention and MLP, vision tower layers and tile embeddings) is `gate`: transformers'
    init leaves them 0, which would make the model blind to its images."""
    import torch
    import transformers

    tokenizer = tiny_gp_tokenizer(MULTIMODAL_CHATML)
    vocab = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    image_token = tokenizer.convert_tokens_to_ids("<|image|>")
    assert image_token == vocab
    torch.manual_seed(seed)
    config = transformers.MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=4, image_size=28, patch_size=14, intermediate_layers_indices=[0, 1],
                           vision_output_dim=96, max_num_tiles=4),
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1],
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=1024),
        image_token_index=image_token)
    model = transformers.MllamaForConditionalGeneration(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.numel() == 1 and "gate" in name:
                param.fill_(gate)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
