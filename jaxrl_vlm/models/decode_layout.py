"""The weight layout of decoding (rollouts, evaluation), apart from training's.

Training shards weights over 'fsdp' (each chip holds 1/fsdp of every matrix and gathers a layer before using it).
A decode step uses every weight once per token, so on the training layout every generated token all-gathers the
whole model (8-way FSDP of Llama-3.2-11B: ~19 GB received per GPU per token). `DecodeLayout` gives decoding its own
mesh over the SAME devices, in the same order: tensor-parallel over `tensor` consecutive devices (a host or an
NVLink node) and the batch over the rest (mesh data = devices / tensor, fsdp = 1), so each chip reads its own
1/tensor share of every matrix from HBM and the collectives of a step are the activations' all-reduces. The params
are resharded (and cast to the compute dtype) once per update by `place`; the training state is untouched. The
logical-axis rules are the one table of `sharding.LOGICAL_RULES`: only the mesh differs (fsdp has size 1).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxrl_vlm.models import llama, mllama
from jaxrl_vlm.models.config import dtype_from_name
from jaxrl_vlm.models.sharding import MeshRules, make_mesh, put_global, tree_shardings


def decode_mesh(mesh: Mesh, tensor: int) -> Mesh:
    """Mesh (data = n / tensor, fsdp = 1, tensor) over `mesh`'s devices in their order (groups of `tensor`
    consecutive devices: the fastest-varying axes of the training mesh, a host or a node). ValueError when tensor
    does not divide the device count."""
    devices = list(np.asarray(mesh.devices).reshape(-1))
    if tensor < 1 or len(devices) % tensor:
        raise ValueError(f"mesh.rollout_tensor={tensor} must be a positive divisor of the {len(devices)} devices")
    return make_mesh(data=len(devices) // tensor, fsdp=1, tensor=tensor, devices=devices)


def _cast_dtype(dtype: Any, to: Any) -> Any:
    return to if jnp.issubdtype(dtype, jnp.floating) else dtype


@functools.lru_cache(maxsize=8)
def _placer(dtype: Any, treedef: Any, shardings: tuple) -> Any:
    """One jitted cast-and-reshard per (dtype, tree, shardings): `place` runs once per update, compiled once."""
    out = jax.tree_util.tree_unflatten(treedef, shardings)
    return jax.jit(lambda params: jax.tree_util.tree_map(lambda x: x.astype(_cast_dtype(x.dtype, dtype)), params),
                   out_shardings=out)


@dataclasses.dataclass(frozen=True)
class DecodeLayout:
    """Decoding's mesh, the params' logical axes (a tree like the params) and the dtype the decode copy is kept in
    (the compute dtype: decoding casts to it anyway)."""

    mesh: Mesh
    axes: Any
    dtype: str

    @property
    def mesh_rules(self) -> MeshRules:
        """The logical rules on the decode mesh (decoders' activation and KV-cache shardings)."""
        return MeshRules(self.mesh)

    def shardings(self, params: Any) -> Any:
        """NamedShardings of a params tree (arrays or ShapeDtypeStructs) on the decode mesh."""
        return tree_shardings(params, self.axes, self.mesh)

    def placer(self, params: Any) -> Any:
        """The jitted `place` for params shaped like `params` (arrays or ShapeDtypeStructs)."""
        flat, treedef = jax.tree_util.tree_flatten(self.shardings(params))
        return _placer(dtype_from_name(self.dtype), treedef, tuple(flat))

    def place(self, params: Any) -> Any:
        """The params resharded onto the decode mesh in `dtype` (a new copy; `params` stay as they are)."""
        return self.placer(params)(params)

    def abstract(self, params: Any) -> Any:
        """`place`'s result as ShapeDtypeStructs (for plans)."""
        dtype = dtype_from_name(self.dtype)
        return jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, _cast_dtype(x.dtype, dtype), sharding=s), params,
            self.shardings(params))

    def decoder(self, decoder: Any) -> Any:
        """A model's `DecodeModel` (LlamaDecoder / MllamaDecoder) running on the decode mesh."""
        return dataclasses.replace(decoder, mesh_rules=self.mesh_rules)

    def put_batch(self, x: Any) -> jax.Array:
        """A host array [B, ...] placed on the decode mesh's batch sharding."""
        x = np.asarray(x)
        return put_global(x, self.mesh_rules.sharding(x.shape, ("batch",) + (None,) * (x.ndim - 1), "batch input"))


def decode_layout(model_config: Any, mesh: Mesh, tensor: int, dtype: str) -> DecodeLayout | None:
    """The `DecodeLayout` of a Llama (`LlamaConfig`) or Mllama (`MllamaConfig`) model trained on `mesh`, decoding
    tensor-parallel over `tensor` devices with params in `dtype`; None for tensor=0 (decode on the training
    layout)."""
    if tensor == 0:
        return None
    axes = (mllama.param_logical_axes(model_config) if isinstance(model_config, mllama.MllamaConfig)
            else llama.param_logical_axes(model_config))
    return DecodeLayout(decode_mesh(mesh, tensor), axes, dtype)
