"""Mllama image preprocessing vs transformers' MllamaImageProcessor (its PIL backend; we use no torch at run time)."""
import json

import numpy as np
import pytest
import transformers
from PIL import Image

from jaxrl_vlm.models import image_processing as ip

# (height, width): square, wide, tall, tiny, large, extreme panorama, odd sizes.
SIZES = [(224, 224), (100, 380), (500, 130), (5, 7), (900, 1300), (30, 2000), (333, 217)]


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _reference(images, **kwargs):
    processor = transformers.MllamaImageProcessorPil(**kwargs)  # the backend used without torchvision
    return processor(images, return_tensors="np")


def _assert_equal_to_reference(ours: ip.MllamaImageBatch, ref) -> None:
    np.testing.assert_array_equal(ours.aspect_ratio_ids, ref["aspect_ratio_ids"])
    np.testing.assert_array_equal(ours.aspect_ratio_mask, ref["aspect_ratio_mask"])
    assert ours.num_tiles == ref["num_tiles"]
    assert ours.pixel_values.shape == ref["pixel_values"].shape
    np.testing.assert_allclose(ours.pixel_values, ref["pixel_values"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("height,width", SIZES)
def test_single_image_matches_transformers_defaults(height, width):
    image = _image(height, width, seed=height * 7 + width)
    _assert_equal_to_reference(ip.preprocess(image), _reference(image))


def test_batch_of_samples_with_different_image_counts():
    batch = [[_image(100, 380, 1), _image(500, 130, 2)], [_image(50, 50, 3)]]
    ours = ip.preprocess(batch)
    _assert_equal_to_reference(ours, _reference(batch))
    assert ours.aspect_ratio_ids[1, 1] == 0  # padding image
    assert ours.aspect_ratio_ids[0, 0] > 1  # wide image -> multi-tile grid


def test_llama32_vision_settings_from_preprocessor_config(tmp_path):
    settings = {
        "size": {"height": 56, "width": 56},
        "max_image_tiles": 4,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 2,
        "rescale_factor": 1 / 255,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    config = ip.MllamaImageProcessorConfig.from_pretrained_dir(tmp_path)
    assert config.tile_size == 56
    images = [[_image(70, 150, 4)], [_image(200, 60, 5)]]
    _assert_equal_to_reference(ip.preprocess(images, config), _reference(images, **settings))


def test_rgba_and_grayscale_numpy_inputs():
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, size=(40, 60, 4), dtype=np.uint8), mode="RGBA")
    gray = rng.integers(0, 256, size=(80, 30), dtype=np.uint8)
    _assert_equal_to_reference(ip.preprocess([[rgba, gray]]), _reference([[rgba, Image.fromarray(gray)]]))


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        ip.preprocess(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        ip.preprocess(np.zeros((10, 10, 5), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ip.MllamaImageProcessorConfig.from_pretrained_dir(tmp_path)
    with pytest.raises(ValueError, match="square"):
        ip.MllamaImageProcessorConfig.from_dict({"size": {"height": 10, "width": 20}})
    with pytest.raises(ValueError, match="images"):
        ip.preprocess([])


@pytest.mark.parametrize("height,width,tile", [(69, 69, 28), (1200, 1200, 560), (2405, 2405, 560), (20, 24, 28),
                                               (30, 80, 28)])
def test_device_preprocessing_equals_the_host_path(height, width, tile):
    """`preprocess_on_device` (jitted, a batch of equally sized images) gives the host path's arrays bit for bit:
    the tiny Mllama's 2x2 tiles of a 69 px V-IRL grid, GP-VL's 1200 px canvas and V-IRL-VL's 2405 px grid at the
    11B's 560 px tiles with CLIP mean/std, an up-scaled image and a padded non-square one."""
    import jax

    config = ip.MllamaImageProcessorConfig(tile_size=tile, image_mean=(0.48145466, 0.4578275, 0.40821073),
                                           image_std=(0.26862954, 0.26130258, 0.27577711), resample=2)
    rng = np.random.default_rng(height)
    images = rng.integers(0, 256, size=(2, height, width, 3), dtype=np.uint8)
    host = ip.preprocess([[image] for image in images], config)
    device = jax.jit(ip.preprocess_on_device, static_argnums=1)(images, config)
    np.testing.assert_array_equal(np.asarray(device["pixel_values"]), host.pixel_values)
    np.testing.assert_array_equal(np.asarray(device["aspect_ratio_ids"]), host.aspect_ratio_ids)
    np.testing.assert_array_equal(np.asarray(device["aspect_ratio_mask"]), host.aspect_ratio_mask)
