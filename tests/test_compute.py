"""The compute axis (spec generalpoints.md §7: SFT 6N(D_init + D_sft), RL 6N(D_init + D_rl) + 2N D_buffer), counted
by hand: N from transformers' own parameter count, tokens from re-tokenised examples and from rolled-out episodes.

The helpers here are shared with the end-to-end tests of test_sft_train.py and test_ppo_train.py, which check the
gflops their runs log against these counts; the tests below check the formula itself on numbers worked by hand."""
import pytest

from jaxrl_vlm.training.flops import ComputeMeter


def hf_num_parameters(checkpoint: str) -> int:
    """Parameter count of an HF checkpoint as transformers reports it (tied embeddings counted once)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint).num_parameters()


def expert_example_tokens(data_dir: str, config_name: str, num_examples: int, seed: int, checkpoint: str) -> list[int]:
    """Token count of each GP-L expert example (user prompt + assistant response), rendered with the checkpoint's
    chat template by transformers and tokenised as one string: no code of ours between the dataset and the count."""
    import transformers

    from jaxrl_vlm.data.gp_expert import build_expert_dataset

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    source = build_expert_dataset(data_dir, config_name, num_examples, seed).as_data_source()["train"]
    counts = []
    for i in range(len(source)):
        text = {k: v.decode() if isinstance(v, bytes) else v
                for k, v in source[i].items() if k in ("prompt", "response")}
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text["prompt"]},
                                                  {"role": "assistant", "content": text["response"]}], tokenize=False)
        counts.append(len(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
    return counts


def gflops(n: int, *, init: int = 0, train: int = 0, buffer: int = 0) -> float:
    """6 N (D_init + D_train) + 2 N D_buffer in GFLOPs."""
    return (6 * n * (init + train) + 2 * n * buffer) / 1e9


def test_meter_formula_on_hand_numbers():
    """The meter's GFLOPs on a worked example: catches a wrong factor (e.g. 2N for training) or a dropped counter."""
    meter = ComputeMeter(num_params=1_000_000, init_tokens=500)
    meter.add(train=300, buffer=1000)
    meter.add(train=200)
    # 6e6 * (500 + 500) + 2e6 * 1000 = 6e9 + 2e9
    assert meter.gflops == pytest.approx(8.0, rel=1e-12)
    assert ComputeMeter.from_state(meter.state()) == meter


def test_image_tokens_are_the_references_count():
    """An image adds (tile / patch)^2 tokens: the reference's 1600 for Llama-3.2-11B-Vision (560 px tiles, 14 px
    patches), 4 for the tests' 28 px tiny Mllama, 0 for a text model. Catches the class token or the tiles
    counted."""
    from jaxrl_vlm.models.config import LlamaConfig
    from jaxrl_vlm.models.mllama import MllamaConfig, mllama_11b_config
    from jaxrl_vlm.training.flops import image_tokens, transition_tokens

    assert image_tokens(MllamaConfig.from_hf_dict(mllama_11b_config(num_text_layers=5, num_vision_layers=1))) == 1600
    assert image_tokens(LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1,
                                    num_kv_heads=1, head_dim=8)) == 0
    # two conversations: 3 + 2 tokens before their first replies, the first revised once (7 tokens before it)
    start, length = [[3, 7], [2, 0]], [[4, 5], [6, 0]]
    assert transition_tokens(start, length, [[True, True], [True, False]], images=10) == 7 + 12 + 8 + 30
