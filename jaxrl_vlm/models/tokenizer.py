"""Tokenizers of checkpoints: the one beside an HF directory's weights, or the one embedded in a .gguf file."""
from __future__ import annotations

import os


def load_tokenizer(path: str):
    """A transformers tokenizer (with its chat template) for an HF checkpoint directory or a .gguf file."""
    from transformers import AutoTokenizer

    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file {path!r} does not exist")
        return AutoTokenizer.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    has_tokenizer = any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
    if not has_tokenizer:
        raise FileNotFoundError(f"{path!r} has no tokenizer.json / tokenizer_config.json")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer in {path!r} has no chat template; the GP prompts need one")
    return tokenizer
