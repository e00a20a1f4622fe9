"""Program reports: memory, loop-aware FLOPs and collective bytes of real compiled programs (8 fake CPU devices,
and a TPU v5e 2x2 slice through libtpu), the replica-group forms XLA prints, the table and the fit advice."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrl_vlm.planning.analysis import (_Module, _replica_groups, analyze, decode_loop, decode_step_note, decode_step_seconds,
                                        fit_advice, format_table)
from jaxrl_vlm.planning.targets import parse_target, target_devices

D, B, L = 256, 64, 5  # width, batch rows, scanned layers


@pytest.fixture(scope="module")
def cpu8():
    """The 8 fake CPU devices as an 8-chip, one-host target (v5e-8's figures)."""
    return dataclasses.replace(parse_target("v5e-8"), name="cpu-8")


def _mesh(devices, shape=None, names=("fsdp",)):
    return Mesh(np.array(devices).reshape(shape or (len(devices),)), names)


def _scan_layers(mesh, dtype):
    """x @ w[l] for each of L layers under lax.scan, the weights fsdp-sharded: each step all-gathers one layer."""
    def f(w, x):
        return jax.lax.scan(lambda x, wl: (jnp.tanh(x @ wl), None), x, w)[0]

    w = jax.ShapeDtypeStruct((L, D, D), dtype, sharding=NamedSharding(mesh, P(None, "fsdp", None)))
    x = jax.ShapeDtypeStruct((B, D), dtype, sharding=NamedSharding(mesh, P("fsdp", None)))
    return jax.jit(f, out_shardings=NamedSharding(mesh, P("fsdp", None))).lower(w, x).compile()


def _check_scan(report, n, itemsize):
    layer_gather = D * D * itemsize * (n - 1) / n  # bytes a chip receives to complete one layer
    (loop,) = report.loops
    assert loop["trip_count"] == L
    assert loop["collectives"]["all-gather"] == layer_gather
    assert report.collectives["all-gather"] == L * layer_gather
    assert report.collective_time_s == pytest.approx(L * layer_gather / parse_target("v5e-8").interconnect_bandwidth)
    dot_flops = L * 2 * (B // n) * D * D  # per chip, all layers
    assert dot_flops <= report.flops < 1.1 * dot_flops
    assert report.total_flops == report.flops * n


def test_cpu_scan_counts_each_layer_gather_and_every_iteration(cpu8):
    report = analyze(_scan_layers(_mesh(jax.devices()), jnp.float32), "scan", cpu8)
    _check_scan(report, 8, 4)
    assert report.step_time_lower_bound_s == max(report.flops / cpu8.peak_flops,
                                                 report.bytes_accessed / cpu8.hbm_bandwidth,
                                                 report.collective_time_s)
    assert any("counts each while-loop body once" in note for note in report.notes)


def test_decode_step_note_bounds_one_iteration_of_the_decode_loop(cpu8):
    mesh, steps = _mesh(jax.devices()), 3

    def generate(w, x):  # `steps` tokens, each through the L scanned layers
        def token(i, x):
            return jax.lax.scan(lambda x, wl: (jnp.tanh(x @ wl), None), x, w)[0]

        return jax.lax.fori_loop(0, steps, token, x)

    w = jax.ShapeDtypeStruct((L, D, D), jnp.float32, sharding=NamedSharding(mesh, P(None, "fsdp", None)))
    x = jax.ShapeDtypeStruct((B, D), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
    report = analyze(jax.jit(generate).lower(w, x).compile(), "decode", cpu8)
    tokens, layers = report.loops
    assert (tokens["trip_count"], layers["trip_count"]) == (steps, L)
    step_s = L * D * D * 4 * 7 / 8 / cpu8.interconnect_bandwidth  # one token gathers every layer
    assert tokens["collective_time_s"] == pytest.approx(step_s)
    light = decode_step_note(report, 1e3, steps, cpu8)  # 1 kB of weights: the token's gathers bound it
    assert f">= {step_s * 1e3:.3f} ms" in light and f"one iteration of {tokens['name']}" in light
    heavy = decode_step_note(report, 1e9, 7, cpu8)  # no loop of 7 steps: the longest loop stands in
    assert f">= {1e9 / cpu8.hbm_bandwidth * 1e3:.3f} ms" in heavy and f"one iteration of {layers['name']}" in heavy
    assert decode_step_seconds(report, 1e3, steps, cpu8) == pytest.approx(step_s)
    # the sampler's token loop is found by name, whatever its trip count (it stops at EOS: none is known)
    named = dataclasses.replace(report, loops=[dict(layers, op_name="jit(rollout)/jit(decode)/while", trip_count=None),
                                               dict(tokens, op_name="jit(score_bytes)/while")])
    assert decode_loop(named, steps)["name"] == layers["name"]


class _CostOverride:
    """A compiled program with another cost analysis (XLA:GPU's generic one says -1 FLOPs of cuBLAS calls)."""

    def __init__(self, compiled, cost):
        self._compiled, self._cost = compiled, cost

    def cost_analysis(self):
        return self._cost

    def __getattr__(self, name):
        return getattr(self._compiled, name)


def test_own_dot_count_where_xla_cannot_count_flops(cpu8):
    compiled = _scan_layers(_mesh(jax.devices()), jnp.float32)
    report = analyze(_CostOverride(compiled, [{"flops": -1.0, "bytes accessed": 1e6}]), "scan", cpu8)
    assert report.flops == L * 2 * (B // 8) * D * D  # the dots of every iteration, nothing else
    assert report.bytes_accessed > 1e6  # XLA's figure, and the iterations it leaves out
    assert any(note.startswith("flops: our own count") for note in report.notes)


@pytest.mark.parametrize("strides, padding, lhs_dilation, rhs_dilation, window", [
    ((1,), ((15, 15),), (1,), (1,), 16),  # XLA:TPU's per-head matmul: a window padded on both sides
    ((15,), ((0, 0),), (16,), (1,), 16),  # ... and its transpose: a dilated input
    ((2,), ((3, 1),), (3,), (2,), 16),
    ((1,), ((0, 0),), (1,), (1,), 5),  # a plain convolution: every tap is real
])
def test_convolution_flops_count_only_taps_on_real_input(strides, padding, lhs_dilation, rhs_dilation, window):
    """Our FLOPs of a convolution equal XLA's cost analysis (counting each output x window tap would give 1.9x,
    16x and 3x the first three)."""
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, lhs_dilation, rhs_dilation)
    compiled = jax.jit(conv).lower(jax.ShapeDtypeStruct((4, 8, 16), jnp.float32),
                                   jax.ShapeDtypeStruct((6, 8, window), jnp.float32)).compile()
    module = _Module(compiled.as_text(), 1, 1e9, 1e9)
    assert module.cost(module.entry, True).flops == compiled.cost_analysis()["flops"] > 0


def test_tpu_scan_infers_the_trip_count_libtpu_leaves_out():
    target = parse_target("v5e-4")
    compiled = _scan_layers(_mesh(target_devices(target)), jnp.bfloat16)
    assert "known_trip_count" not in compiled.as_text()
    report = analyze(compiled, "scan", target)
    _check_scan(report, 4, 2)
    # XLA:TPU's temp_size leaves out the gathered layer; its peak does not
    memory = compiled.memory_analysis()
    assert report.total >= memory.peak_memory_in_bytes > memory.temp_size_in_bytes
    assert report.fits


def test_tpu_training_step_counts_each_async_collective_once():
    target = parse_target("v5e-4")
    mesh = _mesh(target_devices(target))

    def loss(w, x):
        return jnp.mean(jax.lax.scan(lambda x, wl: (jnp.tanh(x @ wl), None), x, w)[0].astype(jnp.float32) ** 2)

    def step(w, x):
        return w - 0.1 * jax.grad(loss)(w, x)

    w = jax.ShapeDtypeStruct((L, D, D), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "fsdp", None)))
    x = jax.ShapeDtypeStruct((B, D), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp", None)))
    compiled = jax.jit(step, donate_argnums=0).lower(w, x).compile()
    # the backward loop's gather runs as async start / compute / done fusions repeating one channel
    assert "AsyncCollectiveStart" in compiled.as_text()
    forward, backward = analyze(compiled, "step", target).loops
    layer = D * D * 2 * 3 / 4
    assert forward["trip_count"] == backward["trip_count"] == L
    assert forward["collectives"]["all-gather"] == backward["collectives"]["all-gather"] == layer
    # the gradient's all-reduce-scatter fusion: a reduce-scatter, (n-1)/n of the layer's gradient
    assert backward["collectives"]["reduce-scatter"] == layer and backward["collectives"]["all-reduce"] == 0


def test_data_parallel_gradient_is_one_ring_all_reduce(cpu8):
    mesh = _mesh(jax.devices(), names=("data",))

    def step(w, x):
        return w - 0.1 * jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)

    w = jax.ShapeDtypeStruct((D, D), jnp.float32, sharding=NamedSharding(mesh, P()))
    x = jax.ShapeDtypeStruct((B, D), jnp.float32, sharding=NamedSharding(mesh, P("data", None)))
    report = analyze(jax.jit(step).lower(w, x).compile(), "step", cpu8, model_flops=6.0 * B * D * D)
    assert report.collectives["all-reduce"] == 2 * 7 / 8 * D * D * 4
    assert report.loops == []
    assert report.mfu_at_bound == pytest.approx(6.0 * B * D * D / (8 * cpu8.peak_flops
                                                                  * report.step_time_lower_bound_s))


def test_collective_permute_sends_its_operand_and_host_crossing_groups_use_dcn(cpu8):
    mesh = _mesh(jax.devices(), names=("ring",))
    shift = jax.shard_map(lambda x: jax.lax.ppermute(x, "ring", [(i, (i + 1) % 8) for i in range(8)]), mesh=mesh,
                      in_specs=P("ring"), out_specs=P("ring"))
    x = jax.ShapeDtypeStruct((B, D), jnp.float32, sharding=NamedSharding(mesh, P("ring")))
    compiled = jax.jit(shift).lower(x).compile()
    one_host = analyze(compiled, "shift", cpu8)
    assert one_host.collectives["collective-permute"] == B // 8 * D * 4
    two_hosts = analyze(compiled, "shift", dataclasses.replace(cpu8, hosts=2, dcn_bandwidth=1e9))
    assert two_hosts.collective_time_s == pytest.approx(B // 8 * D * 4 / 1e9)
    assert one_host.collective_time_s == pytest.approx(B // 8 * D * 4 / cpu8.interconnect_bandwidth)


def test_all_to_all_sends_all_but_its_own_block(cpu8):
    mesh = _mesh(jax.devices(), names=("expert",))
    swap = jax.shard_map(lambda x: jax.lax.all_to_all(x, "expert", 0, 0, tiled=True), mesh=mesh,
                         in_specs=P("expert"), out_specs=P("expert"))
    x = jax.ShapeDtypeStruct((B, D), jnp.float32, sharding=NamedSharding(mesh, P("expert")))
    report = analyze(jax.jit(swap).lower(x).compile(), "swap", cpu8)
    assert report.collectives["all-to-all"] == 7 / 8 * (B // 8) * D * 4


def test_unknown_trip_count_counts_one_iteration_with_a_note(cpu8):
    mesh = _mesh(jax.devices())

    def f(w, x, n):
        return jax.lax.fori_loop(0, n, lambda i, x: jnp.tanh(x @ w[i % L]), x)

    w = jax.ShapeDtypeStruct((L, D, D), jnp.float32, sharding=NamedSharding(mesh, P(None, "fsdp", None)))
    x = jax.ShapeDtypeStruct((B, D), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
    report = analyze(jax.jit(f).lower(w, x, n).compile(), "dynamic", cpu8)
    (loop,) = report.loops
    assert loop["trip_count"] is None
    assert any(loop["name"] in note and "trip count unknown" in note for note in report.notes)
    assert report.collectives["all-gather"] == loop["collectives"]["all-gather"] > 0


def test_donated_bytes_are_not_counted_twice_and_tiny_hbm_does_not_fit(cpu8):
    mesh = _mesh(jax.devices())
    w = jax.ShapeDtypeStruct((8 * D, D), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
    shard = D * D * 4
    donated = analyze(jax.jit(lambda w: w * 2, donate_argnums=0).lower(w).compile(), "scale", cpu8)
    kept = analyze(jax.jit(lambda w: w * 2).lower(w).compile(), "scale", cpu8)
    assert donated.arguments == donated.outputs == kept.arguments == shard
    assert donated.total == kept.total - shard
    assert donated.fits and fit_advice(donated) == ""
    small = analyze(jax.jit(lambda w: w * 2).lower(w).compile(), "scale", dataclasses.replace(cpu8, hbm_bytes=shard))
    assert not small.fits
    assert "arguments" in fit_advice(small) or "inputs" in fit_advice(small)


@pytest.mark.parametrize("text, groups", [
    ("replica_groups={}, x", [[0, 1, 2, 3]]),
    ("replica_groups={{0,1},{2,3}}, x", [[0, 1], [2, 3]]),
    ("replica_groups=[2,4]<=[8], x", [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("replica_groups=[4,2]<=[2,4]T(1,0), x", [[0, 4], [1, 5], [2, 6], [3, 7]]),
    ("replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, x", [list(range(8))]),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, x",
     [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_1'}, x",
     [[0, 4], [1, 5], [2, 6], [3, 7]]),
    ("replica_groups=mesh['a'=8] {'a':(2)2}, x", [[0, 2], [1, 3], [4, 6], [5, 7]]),
])
def test_replica_group_forms(text, groups):
    assert _replica_groups(text, 4) == groups


def test_json_and_table(cpu8):
    mesh = _mesh(jax.devices())
    w = jax.ShapeDtypeStruct((8 * D, D), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
    ok = analyze(jax.jit(lambda w: w * 2).lower(w).compile(), "ok", cpu8)
    too_big = dataclasses.replace(ok, program="too_big", total=2 * ok.hbm_bytes, fits=False)
    data = json.loads(json.dumps(ok.to_json()))
    assert set(data) >= {"program", "target", "chips", "hbm_bytes", "per_chip_bytes", "flops", "bytes_accessed",
                         "step_time_lower_bound_s", "fits", "collectives", "collective_time_s", "mfu_at_bound",
                         "notes"}
    assert data["per_chip_bytes"] == {"arguments": ok.arguments, "outputs": ok.outputs,
                                      "temporaries": ok.temporaries, "total": ok.total}
    table = format_table([ok, too_big]).splitlines()
    assert len(table) == 5 and table[2].startswith("ok ") and table[3].startswith("too_big ")
    assert " 32.00 " in table[3] and " NO " in table[3]
    assert table[-1].startswith("DOES NOT FIT: too_big")
    assert format_table([ok]).splitlines()[-1].startswith("fits: all 1 programs")
