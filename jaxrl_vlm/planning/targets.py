"""Hardware a plan compiles for: Cloud TPU slices and NVIDIA GPU nodes, by name, with their published figures.

`parse_target('v5p-128')` needs nothing installed; `target_devices(target)` gives the target's compile-only devices
(`jax.experimental.topologies.get_topology_desc`): TPU needs libtpu (`jax[tpu]`), GPU the CUDA plugin
(`jax[cuda12]`) in a process started with JAX_PLATFORMS=cpu.

Sources of the chip figures (rates in decimal units, GB/s = 1e9 B/s):
- TPU: Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): peak bf16 FLOP/s, HBM
  capacity and bandwidth, inter-chip interconnect (ICI) bandwidth. HBM capacities are taken as GiB (the v4 and v5p
  pages write GiB; v5e/v6e write "GB" but their HBM stacks are 16 / 32 GiB, which is what a device's memory_stats
  reports, less a runtime reserve). ICI: the pages give the bidirectional bandwidth of all of a chip's links
  (v5e 400 GB/s, v5p 1200 GB/s, v6e 800 GB/s; v4 2400 Gbps one way, from the v4 paper's 6 links); we use the
  one-way half, i.e. what a chip can send at once. A collective over one mesh axis uses only that axis's links,
  so collective times computed with it are optimistic.
- GPU: NVIDIA H100 / H200 datasheets: H100 SXM 989 TFLOP/s dense bf16, 3.35 TB/s HBM3; H200 SXM 989 TFLOP/s,
  4.8 TB/s HBM3e; NVLink 4 900 GB/s per GPU bidirectional, so 450 GB/s one way. HBM capacity is what nvidia-smi
  shows as the total: 81559 MiB (H100 80GB HBM3) and 143771 MiB (H200 141GB HBM3e). Between nodes: one 400 Gb/s
  InfiniBand NDR NIC per GPU (the usual HGX/DGX H100 and H200 fabric) = 50 GB/s.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import jax

GB = 1e9
GIB = 2**30
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Target:
    """A slice or set of nodes to plan for. Per-chip figures: hbm_bytes (capacity, bytes), peak_flops (dense bf16
    FLOP/s), hbm_bandwidth, interconnect_bandwidth (one way, within a TPU slice or a GPU node) and dcn_bandwidth
    (one way, between GPU nodes; for TPU the same as ICI: DCN only joins separate slices), all in bytes/s.
    topology: the `get_topology_desc` name ('v5p:4x4x4'; GPU: 'partitions x nodes x gpus', e.g. '1x2x8')."""

    name: str
    platform: str
    topology: str
    chips: int
    hosts: int
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    interconnect_bandwidth: float
    dcn_bandwidth: float
    chip: str


@dataclasses.dataclass(frozen=True)
class _Chip:
    chip: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    interconnect_bandwidth: float
    dcn_bandwidth: float = 0.0  # GPU only: a TPU slice's chips all talk over ICI


_TPU_CHIPS = {
    "v4": _Chip("TPU v4", 32 * GIB, 275e12, 1200 * GB, 300 * GB),
    "v5e": _Chip("TPU v5e", 16 * GIB, 197e12, 819 * GB, 200 * GB),
    "v5p": _Chip("TPU v5p", 95 * GIB, 459e12, 2765 * GB, 600 * GB),
    "v6e": _Chip("TPU v6e", 32 * GIB, 918e12, 1640 * GB, 400 * GB),
}
_GPU_CHIPS = {
    "h100": _Chip("H100 SXM 80GB", 81559 * MIB, 989e12, 3350 * GB, 450 * GB, 50 * GB),
    "h200": _Chip("H200 SXM 141GB", 143771 * MIB, 989e12, 4800 * GB, 450 * GB, 50 * GB),
}
_GPU_DESCRIPTIONS = {"H100 SXM 80GB": "NVIDIA H100 80GB HBM3", "H200 SXM 141GB": "NVIDIA H200 141GB HBM3e"}
# Slice shapes by chip count, as Cloud TPU lists them (and libtpu's topology names accept). v4 and v5p names count
# TensorCores, 2 per chip (v4-8 and v5p-8 are 4 chips); v5e and v6e names count chips.
_TPU_3D_SHAPES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
                  512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_TPU_2D_SHAPES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_TPU_FAMILIES = {"v4": "v4", "v5p": "v5p", "v5e": "v5e", "v5litepod": "v5e", "v6e": "v6e"}
_GPU_COUNTS = (1, 2, 4, 8)
ACCEPTED = (
    "TPU: v4-N, v5p-N (N = TensorCores, 2 per chip: N in "
    f"{sorted(2 * c for c in _TPU_3D_SHAPES)}), v5e-N / v5litepod-N, v6e-N (N = chips in {sorted(_TPU_2D_SHAPES)}); "
    "GPU: h100xG, h200xG (one node of G in {1, 2, 4, 8} GPUs), Mxh100x8, Mxh200x8 (M nodes of 8)"
)


def parse_target(name: str) -> Target:
    """The Target a name stands for (case-insensitive): 'v5p-128' (64 chips, 4x4x4), 'v5e-256', 'h100x8',
    '2xh100x8'. ValueError lists the accepted forms. Needs neither libtpu nor the CUDA plugin."""
    canonical = name.strip().lower()
    tpu = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", canonical)
    if tpu:
        return _tpu_target(canonical, _TPU_FAMILIES[tpu.group(1)], int(tpu.group(2)))
    gpu = re.fullmatch(r"(?:(\d+)x)?(h100|h200)x(\d+)", canonical)
    if gpu:
        return _gpu_target(canonical, gpu.group(2), int(gpu.group(1) or 1), int(gpu.group(3)))
    raise ValueError(f"unknown target {name!r}; accepted: {ACCEPTED}")


def _tpu_target(name: str, family: str, n: int) -> Target:
    cores_per_chip = 2 if family in ("v4", "v5p") else 1  # what the name's number counts
    shapes = _TPU_3D_SHAPES if cores_per_chip == 2 else _TPU_2D_SHAPES
    chips = n // cores_per_chip
    if n % cores_per_chip or chips not in shapes:
        raise ValueError(f"unknown target {name!r}: no {family} slice of that size; accepted: {ACCEPTED}")
    spec = _TPU_CHIPS[family]
    return Target(name=name, platform="tpu", topology=f"{family}:{shapes[chips]}", chips=chips,
                  hosts=_tpu_hosts(family, chips), hbm_bytes=spec.hbm_bytes, peak_flops=spec.peak_flops,
                  hbm_bandwidth=spec.hbm_bandwidth, interconnect_bandwidth=spec.interconnect_bandwidth,
                  dcn_bandwidth=spec.interconnect_bandwidth, chip=spec.chip)


def _tpu_hosts(family: str, chips: int) -> int:
    # v4/v5p hosts have 4 chips. v5e/v6e slices of up to 8 chips are one VM (1, 4 or 8 chips); larger ones are
    # built from 4-chip VMs, the multi-host machine type (ct5lp-hightpu-4t, ct6e-standard-4t).
    if family in ("v5e", "v6e") and chips <= 8:
        return 1
    return max(1, chips // 4)


def _gpu_target(name: str, family: str, nodes: int, gpus: int) -> Target:
    if gpus not in _GPU_COUNTS or nodes < 1 or (nodes > 1 and gpus != 8):
        raise ValueError(f"unknown target {name!r}; accepted: {ACCEPTED}")
    spec = _GPU_CHIPS[family]
    return Target(name=name, platform="cuda", topology=f"1x{nodes}x{gpus}", chips=nodes * gpus, hosts=nodes,
                  hbm_bytes=spec.hbm_bytes, peak_flops=spec.peak_flops, hbm_bandwidth=spec.hbm_bandwidth,
                  interconnect_bandwidth=spec.interconnect_bandwidth, dcn_bandwidth=spec.dcn_bandwidth,
                  chip=spec.chip)


def target_devices(target: Target) -> list[jax.Device]:
    """The target's compile-only devices (chips x jax.Device, process_index = host), in the topology's order: build
    a Mesh over them and `jax.jit(f).lower(*abstract_args).compile()` compiles for the target. RuntimeError
    naming the install command when libtpu / the CUDA plugin is missing."""
    from jax.experimental import topologies

    if target.platform == "tpu":
        if not _installed("libtpu"):
            raise RuntimeError(f"compiling for {target.name} needs libtpu: pip install "
                               f"'jax[tpu]=={jax.__version__}' (or make install)")
        # libtpu takes /tmp/libtpu_lockfile for the process's lifetime and refuses a second process, so any JAX
        # process on this machine with JAX_PLATFORMS unset would block planning; compiling uses no TPU.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        family, shape = target.topology.split(":")
        options = {}
        if family == "v4":
            options["chip_config_name"] = "megacore"  # one device per chip, as v4 runs; the default is per core
        if target.hosts == 1:  # libtpu's default host is 2x2x1 chips; an 8-chip v5e/v6e VM is one 2x4 host
            bounds = [int(d) for d in shape.split("x")]
            options["chips_per_host_bounds"] = bounds + [1] * (3 - len(bounds))
        return list(topologies.get_topology_desc(topology_name=target.topology, platform="tpu", **options).devices)
    if not any(_installed(f"jax_plugins.xla_cuda{v}") for v in (12, 13)):
        raise RuntimeError(f"compiling for {target.name} needs the CUDA plugin: pip install "
                           f"'jax[cuda12]=={jax.__version__}' (or make install-cuda)")
    try:
        topology = topologies.get_topology_desc(platform="cuda", topology=target.topology,
                                                target_config=gpu_target_config(target))
    except NotImplementedError as e:
        raise RuntimeError("the CUDA plugin did not start (it needs a GPU driver unless JAX is limited to the CPU): "
                           "run the plan with JAX_PLATFORMS=cpu") from e
    return list(topology.devices)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package (jax_plugins) is missing
        return False


def gpu_target_config(target: Target) -> str:
    """The GpuTargetConfigProto (protobuf text) of a GPU target's chip, from the published figures of the H100 SXM
    and H200 SXM (the same GH100 die): 132 SMs of compute capability 9.0 at 1.98 GHz boost, 228 KiB shared memory
    per SM (227 KiB per block opt-in), 50 MiB L2; the HBM capacity and bandwidth of the target. jaxlib 0.10.2
    rejects newer fields such as collective_memory_granularity, so only long-standing ones are written."""
    description = _GPU_DESCRIPTIONS[target.chip]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  shared_memory_per_block_optin: 232448
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(target.hbm_bandwidth)}
  l2_cache_size: {50 * MIB}
  clock_rate_ghz: 1.98
  device_memory_size: {target.hbm_bytes}
  cuda_compute_capability {{ major: 9 minor: 0 feature_extension: ACCELERATED_FEATURES }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  device_vendor: "NVIDIA Corporation"
  name: "{description}"
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{description}"
"""


def chips_per_host(target: Target) -> int:
    """Chips (GPUs) each host (node) of the target holds."""
    return math.ceil(target.chips / target.hosts)
