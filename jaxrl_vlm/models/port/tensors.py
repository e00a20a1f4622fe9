"""Generic checkpoint <-> param-tree conversion driven by a key table (HF name regex -> param path + layout).

Loading streams one param leaf at a time: the leaf is assembled on the host from its HF tensors (one per layer
for stacked leaves), placed straight onto its target sharding with `jax.make_array_from_callback` (each process
only materialises its addressable shards), then dropped. The host never holds more than one leaf.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, Protocol, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxrl_vlm.models.sharding import sharding_for, to_host


class TensorReader(Protocol):
    """A source of HF-named tensors (safetensors directory, GGUF file)."""

    def keys(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str) -> np.ndarray: ...


LAYOUTS = ("copy", "transpose", "heads_in", "heads_out")


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """One row of a key table.

    pattern: regex over the HF name; a group named 'layer' gives the index along a stacked leading [L] axis.
    path: the param path, e.g. ('layers', 'attn', 'q').
    layout: how the HF tensor maps to the param:
      'copy'      same array;
      'transpose' HF [out, in] -> param [in, out];
      'heads_in'  HF [N*Dh, D] -> param [D, N, Dh]   (q/k/v projections);
      'heads_out' HF [D, N*Dh] -> param [N, Dh, D]   (attention output projection).
    hf_name: the HF name template for export, with '{layer}' for stacked leaves.
    """

    pattern: str
    path: tuple[str, ...]
    layout: str
    hf_name: str

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r} for {self.pattern!r}; expected one of {LAYOUTS}")


def hf_shape(layout: str, param_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape an HF tensor must have to fill a (per-layer) param of `param_shape`."""
    s = tuple(param_shape)
    if layout == "copy":
        return s
    if layout == "transpose":
        return s[::-1]
    if layout == "heads_in":
        return (s[1] * s[2], s[0])
    return (s[2], s[0] * s[1])


def hf_to_param(layout: str, hf: np.ndarray, param_shape: Sequence[int]) -> np.ndarray:
    """Convert one HF tensor to the param layout (see `KeyRule`)."""
    if layout == "copy":
        return np.asarray(hf)
    return np.asarray(hf).T.reshape(param_shape)


def param_to_hf(layout: str, param: np.ndarray) -> np.ndarray:
    """Inverse of `hf_to_param`."""
    if layout == "copy":
        return param
    if layout == "transpose":
        return param.T
    if layout == "heads_in":
        return param.reshape(param.shape[0], -1).T
    return param.reshape(-1, param.shape[-1]).T


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _place(host: np.ndarray, axes: tuple, mesh: Mesh | None, name: str) -> jax.Array:
    if mesh is None:
        return jax.device_put(host)
    sharding = sharding_for(host.shape, axes, mesh, name)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_tree(reader: TensorReader, table: Sequence[KeyRule], shapes: Any, axes: Any, dtype: Any,
              mesh: Mesh | None = None, ignore: Sequence[str] = ()) -> Any:
    """Build the param tree described by `shapes` (tuples) / `axes` (logical names) from `reader`.

    ValueError names: an HF key no rule matches (unless it matches an `ignore` regex), an HF key whose shape
    differs from the expected one, or the HF keys missing for a param.
    """
    plan: dict[tuple[str, ...], dict[int, str]] = {}
    rules = [(re.compile(r.pattern), r) for r in table]
    for key in reader.keys():
        for regex, rule in rules:
            m = regex.fullmatch(key)
            if m:
                layer = int(m.group("layer")) if "layer" in regex.groupindex else -1
                plan.setdefault(rule.path, {})[layer] = key
                break
        else:
            if not any(re.fullmatch(p, key) for p in ignore):
                raise ValueError(f"checkpoint tensor {key!r} matches no entry of the key table")
    out: dict = {}
    for rule in table:
        shape = tuple(_get(shapes, rule.path))
        leaf_name = "/".join(rule.path)
        stacked = "(?P<layer>" in rule.pattern
        keys = plan.get(rule.path, {})
        wanted = range(shape[0]) if stacked else [-1]
        missing = [rule.hf_name.format(layer=i) for i in wanted if i not in keys]
        if missing:
            raise ValueError(f"checkpoint lacks tensor(s) {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                             f"for param {leaf_name}")
        extra = sorted(set(keys) - set(wanted))
        if extra:
            raise ValueError(f"checkpoint has layer(s) {extra} beyond the {shape[0]} layers of param {leaf_name}")
        per_layer = shape[1:] if stacked else shape
        host = np.empty(shape, dtype)
        for i in wanted:
            key = keys[i]
            expected = hf_shape(rule.layout, per_layer)
            if tuple(reader.shape(key)) != expected:
                raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(reader.shape(key))}, "
                                 f"expected {expected} for param {leaf_name}")
            value = hf_to_param(rule.layout, reader.read(key), per_layer).astype(dtype)
            if stacked:
                host[i] = value
            else:
                host[...] = value
        _set(out, rule.path, _place(host, tuple(_get(axes, rule.path)), mesh, leaf_name))
        del host
    return out


def iter_hf_tensors(params: Any, table: Sequence[KeyRule], dtype: Any = None) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) pairs of a param tree, in key-table order, one leaf on the host at a time."""
    for rule in table:
        try:
            leaf = _get(params, rule.path)
        except KeyError:
            continue
        host = to_host(leaf)
        if dtype is not None:
            host = host.astype(dtype)
        if "(?P<layer>" in rule.pattern:
            for i in range(host.shape[0]):
                yield rule.hf_name.format(layer=i), np.ascontiguousarray(param_to_hf(rule.layout, host[i]))
        else:
            yield rule.hf_name, np.ascontiguousarray(param_to_hf(rule.layout, host))
