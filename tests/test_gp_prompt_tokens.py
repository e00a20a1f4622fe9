"""Device-assembled GP prompt/revision token ids decode to exactly the host chat-template text."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quicktok
from transformers.utils.chat_template_utils import render_jinja_template

from jaxrl_vlm.envs.general_points import prompt_tokens as pt
from jaxrl_vlm.envs.general_points import prompts
from jaxrl_vlm.envs.general_points.env import feedback_fragment_texts

WIDTH = 1024
DATE = {"date_string": "26 Jul 2024"}

# A Llama-3.2-style text template (trims contents, inserts a date) and a Llama-3.2-Vision-style one (image part).
LLAMA32_TEMPLATE = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA32_VISION_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}{%- else %}"
    "{%- for part in message['content'] %}{%- if part['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] | trim }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


class QuicktokChatTokenizer:
    """The tokenizer interface prompt_tokens uses (call, decode, batch_decode, len, apply_chat_template) over the real
    Llama 3 vocabulary that quicktok ships plus Llama 3.2 Vision's `<|image|>` (id 128256), with a chat template
    rendered by transformers' own Jinja renderer."""

    IMAGE, IMAGE_ID = "<|image|>", 128256

    def __init__(self):
        self.enc = quicktok.get_encoding("llama3")
        self.chat_template = LLAMA32_TEMPLATE

    def __len__(self):
        return self.enc.n_vocab + 1

    def _encode(self, text):
        parts = [self.enc.encode_with_special(part) for part in text.split(self.IMAGE)]
        return [tok for i, part in enumerate(parts) for tok in ([self.IMAGE_ID] if i else []) + part]

    def __call__(self, text, add_special_tokens=False):
        assert not add_special_tokens
        return {"input_ids": [self._encode(t) for t in text] if isinstance(text, list) else self._encode(text)}

    def decode(self, ids, clean_up_tokenization_spaces=False):
        ids = list(ids)
        cuts = [i for i, t in enumerate(ids) if t == self.IMAGE_ID]
        pieces = [ids[a + 1:b] for a, b in zip([-1] + cuts, cuts + [len(ids)])]
        return self.IMAGE.join(self.enc.decode(p) for p in pieces)

    def batch_decode(self, sequences, clean_up_tokenization_spaces=False):
        return [self.decode(s) for s in sequences]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **kwargs):
        assert not tokenize
        rendered, _ = render_jinja_template([messages], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt,
                                            bos_token="<|begin_of_text|>", **kwargs)
        return rendered[0]


@pytest.fixture(scope="module")
def llama3():
    return QuicktokChatTokenizer()


@pytest.fixture(scope="module")
def smollm2(smollm2_tokenizer):
    return smollm2_tokenizer


def _hands(n, seed):
    return np.random.default_rng(seed).integers(1, 14, size=(n, 4)).astype(np.int32)


def _decode_rows(tok, batch, padding_side="right"):
    ids, lens = np.asarray(batch.ids), np.asarray(batch.lengths)
    rows = [r[:n] if padding_side == "right" else r[len(r) - n:] for r, n in zip(ids, lens)]
    return [tok.decode(r.tolist(), clean_up_tokenization_spaces=False) for r in rows]


def _feedback_case(rng, texts):
    """A random fragment sequence and its text (a verifier feedback never ends with whitespace)."""
    while True:
        frags = rng.integers(0, len(texts), size=rng.integers(1, 7))
        text = "".join(texts[f] for f in frags)
        if text == text.rstrip():
            return frags, text


def _episode(tok, codec, ranks, replies_text, rng, texts, *, face, language_only, padding_side, kwargs, image_token=None):
    """Assemble a 3-turn episode on the device and render it on the host; return (device texts, host texts)."""
    n = len(ranks)
    batch = pt.prompt_ids(codec, jnp.asarray(ranks), width=WIDTH, pad_id=0, padding_side=padding_side)
    assert not np.asarray(batch.overflow).any()
    replies, feedbacks = [[] for _ in range(n)], [[] for _ in range(n)]
    device = [_decode_rows(tok, batch, padding_side)]
    host = [[tok.apply_chat_template(pt.gp_conversation(r, face_cards_as_10=face, language_only=language_only,
                                                        image_token=image_token),
                                     tokenize=False, add_generation_prompt=True, **kwargs) for r in ranks]]
    for turn in range(2):
        texts_turn = [replies_text[(i + turn) % len(replies_text)] for i in range(n)]
        reply_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts_turn]
        width_r = max(map(len, reply_ids)) + 3
        reply = np.full((n, width_r), 7, np.int32)
        for i, r in enumerate(reply_ids):
            reply[i, : len(r)] = r
        cases = [_feedback_case(rng, texts) for _ in range(n)]
        frags = np.zeros((n, 8), np.int32)
        for i, (f, _) in enumerate(cases):
            frags[i, : len(f)] = f
        batch = pt.append_revision(codec, batch, jnp.asarray(reply), jnp.asarray([len(r) for r in reply_ids]),
                                   jnp.asarray(frags), jnp.asarray([len(f) for f, _ in cases]),
                                   width=WIDTH, pad_id=0, padding_side=padding_side)
        assert not np.asarray(batch.overflow).any()
        for i in range(n):
            replies[i].append(tok.decode(reply_ids[i], clean_up_tokenization_spaces=False))
            feedbacks[i].append(cases[i][1])
        device.append(_decode_rows(tok, batch, padding_side))
        host.append([tok.apply_chat_template(
            pt.gp_conversation(r, replies[i], feedbacks[i], face_cards_as_10=face, language_only=language_only,
                               image_token=image_token),
            tokenize=False, add_generation_prompt=True, **kwargs) for i, r in enumerate(ranks)])
    return device, host


REPLIES = [
    prompts.expert_response([13, 5, 2, 4], "10*2+5-4", face_cards_as_10=True),
    "\n  The answer is 24 \n\n",
    "   ",
    "{\"formula\": \"(3+5)*3\"}",
    " x",
    "",
]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_smollm2_gp_l_episode_decodes_to_host_text(smollm2, padding_side):
    rng = np.random.default_rng(0)
    texts = feedback_fragment_texts()
    for face in (True, False):
        codec = pt.build_prompt_codec(smollm2, language_only=True, face_cards_as_10=face, fragment_texts=texts)
        assert codec.trim is None
        ranks = _hands(12, 1 + face)
        device, host = _episode(smollm2, codec, ranks, REPLIES, rng, texts, face=face, language_only=True,
                                padding_side=padding_side, kwargs={})
        for turn, (d, h) in enumerate(zip(device, host)):
            assert d == h, f"turn {turn}"


def test_smollm2_prompt_ids_many_hands(smollm2):
    codec = pt.build_prompt_codec(smollm2, language_only=True, face_cards_as_10=True)
    ranks = np.array([[a, b, c, d] for a in range(1, 14) for b in range(1, 14) for c, d in ((a, b), (5, 13))])
    got = _decode_rows(smollm2, pt.prompt_ids(codec, jnp.asarray(ranks), width=400))
    for r, text in zip(ranks, got):
        assert text == smollm2.apply_chat_template(
            pt.gp_conversation(r, face_cards_as_10=True, language_only=True), tokenize=False, add_generation_prompt=True)


def test_llama3_vocabulary_episode_decodes_to_host_text(llama3):
    """The real Llama 3 vocabulary (128k tokens) with the Llama 3.2 template: trimming, an explicit date."""
    llama3.chat_template = LLAMA32_TEMPLATE
    layout = pt.chat_layout(llama3, language_only=True, template_kwargs=DATE)
    assert layout.assistant_strip and layout.user_strip and layout.first_user_strip == (True, True)
    assert "Today Date: 26 Jul 2024" in layout.head
    texts = feedback_fragment_texts()
    codec = pt.build_prompt_codec(llama3, language_only=True, face_cards_as_10=False, fragment_texts=texts,
                                  template_kwargs=DATE)
    assert codec.trim is not None and codec.trim.whitespace_only.shape[0] == 128257
    device, host = _episode(llama3, codec, _hands(8, 9), REPLIES + ["\u00e9t\u00e9 24 \n"], np.random.default_rng(8),
                            texts, face=False, language_only=True, padding_side="left", kwargs=DATE)
    assert device == host


def test_llama_vision_style_gp_vl_prompt(llama3):
    llama3.chat_template = LLAMA32_VISION_TEMPLATE
    texts = feedback_fragment_texts()
    codec = pt.build_prompt_codec(llama3, language_only=False, face_cards_as_10=True, fragment_texts=texts)
    ranks = _hands(4, 5)
    batch = pt.prompt_ids(codec, jnp.asarray(ranks), width=WIDTH)
    assert (np.asarray(batch.ids) == llama3.IMAGE_ID).sum(axis=1).tolist() == [1] * 4
    device, host = _episode(llama3, codec, ranks, REPLIES, np.random.default_rng(6), texts, face=True,
                            language_only=False, padding_side="right", kwargs={})
    assert device == host


def test_text_only_template_gp_vl_needs_image_token(smollm2):
    with pytest.raises(ValueError, match="image_token"):
        pt.build_prompt_codec(smollm2, language_only=False, face_cards_as_10=True)
    codec = pt.build_prompt_codec(smollm2, language_only=False, face_cards_as_10=True, image_token="<image>")
    text = _decode_rows(smollm2, pt.prompt_ids(codec, jnp.ones((1, 4), jnp.int32), width=WIDTH))[0]
    assert text == smollm2.apply_chat_template(
        pt.gp_conversation([1, 1, 1, 1], face_cards_as_10=True, language_only=False, image_token="<image>"),
        tokenize=False, add_generation_prompt=True)


def test_overflow_flag_and_jit(smollm2):
    codec = pt.build_prompt_codec(smollm2, language_only=True, face_cards_as_10=True)
    fn = jax.jit(pt.prompt_ids, static_argnames=("width", "pad_id", "padding_side"))
    short = fn(codec, jnp.ones((2, 4), jnp.int32), width=16)
    assert np.asarray(short.overflow).all() and (np.asarray(short.lengths) == 16).all()
    with pytest.raises(ValueError, match="padding_side"):
        pt.prompt_ids(codec, jnp.ones((2, 4), jnp.int32), width=16, padding_side="middle")


@pytest.mark.parametrize("vocabulary", ["smollm2", "llama3"])
def test_first_prompt_ids_are_the_tokenizers_own(vocabulary, smollm2, llama3):
    """The assembled GP-L prompt ids equal the tokenizer's ids of the whole rendered prompt (what SFT data and the
    reference feed the model), not only the same text: fails when a piece boundary cuts a pre-token, e.g. the
    'Cards: ' / \"['\" cut, which every prompt had (' ', \"['\" instead of \" ['\"; Llama 3 also merges
    \"']\\n\\n\")."""
    tokenizer, kwargs = (smollm2, {}) if vocabulary == "smollm2" else (llama3, DATE)
    if vocabulary == "llama3":
        llama3.chat_template = LLAMA32_TEMPLATE
    hands = np.array(list(itertools.product(range(1, 14), repeat=4)))[::41]  # 697 hands, every rank everywhere
    for face in (True, False):
        codec = pt.build_prompt_codec(tokenizer, language_only=True, face_cards_as_10=face, template_kwargs=kwargs)
        batch = pt.prompt_ids(codec, jnp.asarray(hands), width=400, padding_side="right")
        ids, lengths = np.asarray(batch.ids), np.asarray(batch.lengths)
        texts = [tokenizer.apply_chat_template(pt.gp_conversation(h, face_cards_as_10=face, language_only=True),
                                               tokenize=False, add_generation_prompt=True, **kwargs) for h in hands]
        for i, expected in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
            assert ids[i, :lengths[i]].tolist() == list(expected), (face, hands[i].tolist())
