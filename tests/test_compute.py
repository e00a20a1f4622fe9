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
