"""V-IRL visual observation on the device: the panoramas of a route set's rails and the 2x2 view grid of a state.

Connects the environment's view hook (`VirlEnv.current_view`: pano index and heading of the current rail point)
to the city package's renderer (`views.render_view_grids`). Panoramas are read once (RGB; the reference reads BGR
and converts back, so the net result is RGB) and stacked on the device; all panoramas of one store must have the
same size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxrl_vlm.envs.virl.rails import RouteTemplate
from jaxrl_vlm.envs.virl.reader import RouteSet
from jaxrl_vlm.envs.virl.views import render_view_grids


class PanoramaStore:
    """Device stack uint8[M, H, W, 3] of every pano a rail can visit, with rotations float32[M]."""

    def __init__(self, route_set: RouteSet, templates: list[RouteTemplate]):
        used = sorted({s.pano for t in templates for s in t.slots if s.pano >= 0})
        images, shape = [], None
        for pano in used:
            path = route_set.pano_files(pano)[0]
            image = np.asarray(Image.open(path).convert("RGB"))
            if shape is not None and image.shape != shape:
                raise ValueError(f"panorama {path} has shape {image.shape}, others {shape}: one size per store")
            shape = image.shape
            images.append(image)
        self.row = np.full(len(route_set.mapping.pano_ids), -1, np.int32)
        self.row[used] = np.arange(len(used), dtype=np.int32)
        self.panoramas = jnp.asarray(np.stack(images))
        self.rotations = jnp.asarray([route_set.rotation(p) for p in used], jnp.float32)

    def grids(self, pano: jax.Array, heading: jax.Array, view_size: int = 640, resolution: int = 1200) -> jax.Array:
        """uint8[B, 2 * resolution + 5, 2 * resolution + 5, 3] grids of mapping pano indices int32[B] at headings."""
        rows = jnp.asarray(self.row)[jnp.asarray(pano)]
        return render_view_grids(self.panoramas, rows, jnp.asarray(heading, jnp.float32), self.rotations[rows],
                                 view_size=view_size, resolution=resolution)
