"""jaxrl_vlm: SFT and PPO post-training of vision-language models in JAX/Flax."""
from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.7",
    "flax>=0.10",
    "optax>=0.2",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "transformers>=5.0",
    "jinja2>=3.1",  # transformers renders chat templates with it (not among its own requirements)
    "tokenizers>=0.20",
    "safetensors>=0.4",
    "gguf>=0.10",
    "tensorflow-datasets>=4.9",
    "array_record>=0.5",
    "pillow>=10",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "tensorboardX>=2.6",
    "scipy>=1.11",
    "absl-py>=1.0",
    "ml_dtypes>=0.4",
]

DEV = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "hypothesis>=6.100",
    "torch==2.13.0",
    "accelerate>=1.0",
    "quicktok-v1>=0.4",
    # libtpu, for the tests that compile programs for small TPU topologies on the CPU (jaxrl_vlm.plan); jax's own
    # extra picks the libtpu its version needs (constraints.txt pins it). Its wheels are for Linux x86_64 hosts:
    # the marker keeps a dev install working elsewhere (without the TPU compile tests' libtpu).
    "jax[tpu]; platform_system == 'Linux' and platform_machine == 'x86_64'",
]

setup(
    name="jaxrl_vlm",
    version="0.1.0",
    description="SFT and PPO post-training of vision-language models in JAX/Flax (GeneralPoints, V-IRL).",
    packages=find_packages(include=["jaxrl_vlm", "jaxrl_vlm.*"]),
    python_requires=">=3.11",  # jax 0.7 and newer
    install_requires=RUNTIME,
    extras_require={"dev": DEV, "wandb": ["wandb"]},
)
