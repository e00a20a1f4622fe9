"""Datasets built by jaxrl_vlm (TFDS builders written as array_record; no TensorFlow needed)."""
