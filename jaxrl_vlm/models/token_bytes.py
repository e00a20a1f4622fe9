"""Token ids <-> verifier bytes on the device, for byte-level BPE tokenizers (GPT-2 / Llama-3 / SmolLM2 style).

A byte-level BPE token is a string over the 256 "byte characters" of GPT-2's `bytes_to_unicode` map; its bytes are
the inverse map of its characters. `token_byte_table` turns a Hugging Face tokenizer into `uint8[V, Kmax]` + lengths
once on the host; `tokens_to_bytes` then concatenates the bytes of sampled token ids on the device, so they can go
straight into `verifier_device.score_bytes`. Reading those bytes with `verifier.read_reply` (UTF-8, errors replaced)
gives what `tokenizer.decode(ids, clean_up_tokenization_spaces=False)` gives.

Added tokens are decoded like every other token (the tokenizers ByteLevel decoder also maps their characters through
the byte map; a character outside the map stands for its own UTF-8 bytes). Special tokens (`<|im_end|>`, ...) are
either their text (`special_tokens="text"`, like `decode(skip_special_tokens=False)`) or empty (`"empty"`, like
`skip_special_tokens=True`). Ids outside the table give no bytes.

The other direction, for the verifier's feedback: `fragment_token_table` tokenizes each text of
`verifier_device.feedback_fragment_texts()` once, and `fragments_to_tokens` turns the verifier's fragment ids into
token ids on the device. Their decode is the feedback text exactly, but the ids can differ from tokenizing the whole
feedback string at once (BPE merges do not cross fragment boundaries).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class TokenByteTable(NamedTuple):
    """bytes: uint8[V, Kmax] zero-padded bytes of each token id; lengths: int32[V]."""

    bytes: np.ndarray | jax.Array
    lengths: np.ndarray | jax.Array


@functools.lru_cache(maxsize=1)
def byte_level_char_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the character that stands for each byte -> that byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _token_bytes(token: str, char_to_byte: dict[str, int]) -> bytes:
    return b"".join(bytes([char_to_byte[c]]) if c in char_to_byte else c.encode("utf-8") for c in token)


def token_byte_table(tokenizer, special_tokens: str = "text") -> TokenByteTable:
    """Host table of the bytes of every token id of a byte-level BPE Hugging Face tokenizer.

    special_tokens: "text" (special tokens give their text) or "empty" (they give no bytes).
    """
    if special_tokens not in ("text", "empty"):
        raise ValueError(f"special_tokens must be 'text' or 'empty', got {special_tokens!r}")
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None or type(decoder).__name__ != "ByteLevel":
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has decoder {decoder!r}; token_byte_table needs a "
                         "byte-level BPE tokenizer (ByteLevel decoder)")
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    special = {i for i, added in tokenizer.added_tokens_decoder.items() if added.special}
    special = special if special_tokens == "empty" else set()
    char_to_byte = byte_level_char_to_byte()
    rows = [b""] * size
    for token, i in vocab.items():
        rows[i] = b"" if i in special else _token_bytes(token, char_to_byte)
    width = max(1, max(len(r) for r in rows))
    table = np.zeros((size, width), dtype=np.uint8)
    for i, r in enumerate(rows):
        table[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
    return TokenByteTable(table, np.array([len(r) for r in rows], dtype=np.int32))


def _concat_rows(ids: jax.Array, lengths: jax.Array, rows: jax.Array, row_lengths: jax.Array,
                 width: int | None = None):
    """Concatenate rows[ids[b, t]][:row_lengths[...]] for t < lengths[b]: ([B, width or T*W] zero-padded, items
    past width dropped; int32[B] total length, not clipped)."""
    bsz, t = ids.shape
    vocab, row_width = rows.shape
    width = t * row_width if width is None else width
    ids = ids.astype(jnp.int32)
    live = (jnp.arange(t)[None] < lengths[:, None]) & (ids >= 0) & (ids < vocab)
    safe = jnp.where(live, ids, 0)
    item_len = jnp.where(live, row_lengths[safe], 0)
    start = jnp.cumsum(item_len, axis=-1) - item_len
    k = jnp.arange(row_width)
    pos = jnp.where(k[None, None] < item_len[..., None], start[..., None] + k[None, None], width)
    out = jnp.zeros((bsz, width), rows.dtype).at[jnp.arange(bsz)[:, None], pos.reshape(bsz, -1)].set(
        rows[safe].reshape(bsz, -1), mode="drop")
    return out, item_len.sum(axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("width",))
def tokens_to_bytes(token_ids: jax.Array, lengths: jax.Array, table: TokenByteTable,
                    width: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Concatenated bytes of token_ids int32[B, T] (the first lengths[b] of row b): (uint8[B, W], int32[B]).

    W = width if given (static; bytes past it are dropped) else T*Kmax. The returned length is the full byte count,
    so `length > width` tells that a reply was cut (`score_bytes` then reads its first W bytes).
    """
    return _concat_rows(token_ids, lengths, jnp.asarray(table.bytes), jnp.asarray(table.lengths), width)


class FragmentTokenTable(NamedTuple):
    """tokens: int32[NF, Tmax] token ids of each feedback fragment (zero-padded); lengths: int32[NF]."""

    tokens: np.ndarray | jax.Array
    lengths: np.ndarray | jax.Array


def fragment_token_table(tokenizer, texts: list[str]) -> FragmentTokenTable:
    """Token ids of each fragment text (e.g. `feedback_fragment_texts()`), without special tokens."""
    encoded = [tokenizer.encode(text, add_special_tokens=False) if text else [] for text in texts]
    width = max(1, max(len(e) for e in encoded))
    tokens = np.zeros((len(texts), width), dtype=np.int32)
    for i, e in enumerate(encoded):
        tokens[i, : len(e)] = e
    return FragmentTokenTable(tokens, np.array([len(e) for e in encoded], dtype=np.int32))


@jax.jit
def fragments_to_tokens(fragments: jax.Array, num_fragments: jax.Array,
                        table: FragmentTokenTable) -> tuple[jax.Array, jax.Array]:
    """Token ids of the verifier's feedback: fragments int32[B, K] (first num_fragments[b] of row b) ->
    (int32[B, K*Tmax] zero-padded, int32[B] lengths)."""
    return _concat_rows(fragments, num_fragments, jnp.asarray(table.tokens), jnp.asarray(table.lengths))
