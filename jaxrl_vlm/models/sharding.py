"""Device mesh and the ONE table of logical-axis rules used for params, optimizer state, activations and KV cache.

Mesh axes: ('data', 'fsdp', 'tensor'). Every array of the models carries a tuple of logical axis names per
dimension (e.g. ('embed', 'heads', 'head_dim')); `LOGICAL_RULES` maps each logical name to mesh axes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_vlm.shapes import round_up

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("seq", None),
    ("cache_seq", None),
    ("act_embed", None),
    ("value_hidden", None),
)

Axes = tuple[str | None, ...]


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh (data, fsdp, tensor) over `devices` (default: all global devices); sizes must multiply to their count."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if int(size) < 1:
            raise ValueError(f"mesh axis '{name}' must have size >= 1, got {size}")
    if data * fsdp * tensor != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor} devices, "
                         f"but {len(devices)} devices are available")
    return Mesh(np.array(devices, dtype=object).reshape(data, fsdp, tensor), MESH_AXES)


def mesh_from_config(cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh from a mapping such as {'data': 2, 'fsdp': 2, 'tensor': 2}; an unknown key is a ValueError."""
    unknown = sorted(set(cfg) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axis name(s) {unknown}; expected a subset of {list(MESH_AXES)}")
    return make_mesh(devices=devices, **{k: int(v) for k, v in cfg.items()})


def logical_to_spec(axes: Axes, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> PartitionSpec:
    """PartitionSpec for a tuple of logical axis names (None = replicated); unknown names are a ValueError."""
    table = dict(rules)
    out = []
    for name in axes:
        if name is None:
            out.append(None)
        elif name not in table:
            raise ValueError(f"logical axis '{name}' has no sharding rule; known: {sorted(table)}")
        else:
            out.append(table[name])
    return PartitionSpec(*out)


def _mesh_axes_of(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def sharding_for(shape: Sequence[int], axes: Axes, mesh: Mesh, name: str = "array",
                 rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> NamedSharding:
    """NamedSharding of an array of `shape` with logical `axes` on `mesh`.

    ValueError (naming `name`, the dimension, the logical axis and the mesh axes) when the rank differs, a mesh axis
    is not in the mesh, or the mesh axes' total size does not divide the dimension.
    """
    if len(shape) != len(axes):
        raise ValueError(f"{name}: shape {tuple(shape)} has rank {len(shape)} but logical axes {axes} "
                         f"have {len(axes)} entries")
    spec = logical_to_spec(axes, rules)
    for dim, (size, logical, entry) in enumerate(zip(shape, axes, spec)):
        mesh_axes = _mesh_axes_of(entry)
        for axis in mesh_axes:
            if axis not in mesh.shape:
                raise ValueError(f"{name}: logical axis '{logical}' maps to mesh axis '{axis}', which the mesh "
                                 f"{dict(mesh.shape)} does not have")
        total = math.prod(mesh.shape[a] for a in mesh_axes)
        if size % total:
            raise ValueError(f"{name}: dimension {dim} (logical axis '{logical}', size {size}) is not divisible by "
                             f"mesh axes {mesh_axes} of total size {total} (mesh {dict(mesh.shape)})")
    return NamedSharding(mesh, spec)


def _path_name(path: Any) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def tree_shardings(shapes: Any, axes: Any, mesh: Mesh) -> Any:
    """Map a tree of shapes (tuples, or arrays / ShapeDtypeStructs) and a matching tree of logical axes to
    a tree of NamedShardings."""
    def one(path, axes_leaf, shape_leaf):
        shape = getattr(shape_leaf, "shape", shape_leaf)
        return sharding_for(shape, axes_leaf, mesh, _path_name(path))
    is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
    return jax.tree_util.tree_map_with_path(one, axes, shapes, is_leaf=is_axes)


def shard_tree(tree: Any, axes: Any, mesh: Mesh) -> Any:
    """Place every array of `tree` on `mesh` following its logical axes (tree of the same structure)."""
    return jax.device_put(tree, tree_shardings(tree, axes, mesh))


def optimizer_state_shardings(opt_state: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optax state (arrays or ShapeDtypeStructs): a leaf whose tree path ends with a param's path
    and has that param's shape gets the param's sharding (Adam moments etc.); other leaves are replicated."""
    by_path = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(params),
                                      jax.tree_util.tree_leaves(param_shardings)):
        by_path[_path_name(path)] = (tuple(leaf.shape), sharding)
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, leaf):
        name = _path_name(path)
        for param_path, (shape, sharding) in by_path.items():
            if (name == param_path or name.endswith("/" + param_path)) and tuple(leaf.shape) == shape:
                return sharding
        return replicated
    return jax.tree_util.tree_map_with_path(one, opt_state)


@dataclasses.dataclass(frozen=True)
class MeshRules:
    """A mesh with the logical rules, hashable so it can be a static jit argument; constrains activations."""

    mesh: Mesh
    rules: tuple[tuple[str, Any], ...] = LOGICAL_RULES

    def constrain(self, x: jax.Array, axes: Axes, name: str = "activation") -> jax.Array:
        """`with_sharding_constraint` of x (inside jit) to its logical axes."""
        return jax.lax.with_sharding_constraint(x, sharding_for(x.shape, axes, self.mesh, name, self.rules))

    def sharding(self, shape: Sequence[int], axes: Axes, name: str = "array") -> NamedSharding:
        """NamedSharding for an array of `shape` with logical `axes`."""
        return sharding_for(shape, axes, self.mesh, name, self.rules)

    def axis_size(self, logical: str) -> int:
        """Number of shards of a dimension with this logical axis (the product of its mesh axes' sizes)."""
        return math.prod(self.mesh.shape[a] for a in _mesh_axes_of(dict(self.rules)[logical]))


def batch_multiple(mesh_rules: MeshRules | None) -> int:
    """Rows a batch input must come in multiples of: the shards of the 'batch' axis (1 without a mesh)."""
    return 1 if mesh_rules is None else mesh_rules.axis_size("batch")


def pad_rows(x: Any, rows: int) -> np.ndarray:
    """Host array [B, ...] extended to `rows` >= B rows with copies of its last row (real values: no NaN from an
    all-masked row); callers keep the first B rows of what they compute."""
    x = np.asarray(x)
    if x.shape[0] > rows:
        raise ValueError(f"pad_rows: {x.shape[0]} rows do not fit in {rows}")
    return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)]) if rows > x.shape[0] else x


def padded_rows(rows: int, mesh_rules: MeshRules | None) -> int:
    """`rows` rounded up to a multiple of `batch_multiple(mesh_rules)`."""
    return round_up(rows, batch_multiple(mesh_rules))


def to_host(x: Any) -> np.ndarray:
    """numpy copy of an array; gathers a multi-process sharded array from all processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def put_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """Place a host array that every process holds in full onto `sharding` (works multi-process)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
