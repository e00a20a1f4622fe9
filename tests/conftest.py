"""Test-wide setup: 8 fake CPU devices for sharding tests, set before JAX is imported anywhere."""
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import gc

import pytest


_XLA_CACHE_PREFIX = "jaxrl_vlm_test_xla_cache_"


def pytest_configure(config):
    """One persistent compilation cache per test-running process (not the xdist controller) and the jobs it
    launches, set before JAX is imported: the same programs are compiled again by fresh jit closures (a resumed run,
    a second `train_ppo`, `eval` after `main`)."""
    controller = config.getoption("numprocesses", None) and not hasattr(config, "workerinput")
    if not controller and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix=_XLA_CACHE_PREFIX)


def pytest_unconfigure(config):
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    if os.path.basename(directory).startswith(_XLA_CACHE_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def release_compiled_code():
    """Drop JAX's compilation caches after each test module: every XLA:CPU executable keeps its code mapped (a few
    memory maps per kernel), and one process running the whole suite otherwise reaches the kernel's 65,530-map
    limit (vm.max_map_count) and segfaults inside a later compilation."""
    yield
    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template), loaded once per test session."""
    from jaxrl_vlm.models.api import default_model_path
    from jaxrl_vlm.models.tokenizer import load_tokenizer

    return load_tokenizer(default_model_path())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, smollm2_tokenizer):
    """A tiny random LlamaForCausalLM over a ~500-token GP vocabulary, saved with that tokenizer (SmolLM2's chat
    template): fast training and rollout tests through the real tokenizer and chat-template code paths."""
    from llama_test_utils import tiny_hf_llama
    from tiny_models import tiny_gp_tokenizer

    directory = str(tmp_path_factory.mktemp("tiny_llama"))
    tokenizer = tiny_gp_tokenizer(smollm2_tokenizer.chat_template)
    tiny_hf_llama(directory, tied=True, vocab_size=512, max_shard_size=None)  # >= len(tokenizer), divisible by 8
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_mllama_checkpoint(tmp_path_factory):
    """A tiny random MllamaForConditionalGeneration (28 px tiles, 2x2 tiles at most) over the tiny GP vocabulary
    with a ChatML template that writes <|image|> for image parts (`tiny_models.save_tiny_gp_mllama`)."""
    from tiny_models import save_tiny_gp_mllama

    directory = str(tmp_path_factory.mktemp("tiny_mllama"))
    save_tiny_gp_mllama(directory)
    return directory
