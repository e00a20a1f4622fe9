"""Test-wide setup: 8 fake CPU devices for sharding tests, set before JAX is imported anywhere."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template), loaded once per test session."""
    from jaxrl_vlm.models.api import default_model_path
    from jaxrl_vlm.models.tokenizer import load_tokenizer

    return load_tokenizer(default_model_path())
