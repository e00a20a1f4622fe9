"""Checkpoint porting: HF safetensors directories and GGUF files to and from param trees."""
