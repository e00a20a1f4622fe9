"""jaxrl_vlm: SFT and PPO post-training of vision-language models in JAX/Flax."""
__version__ = "0.1.0"
