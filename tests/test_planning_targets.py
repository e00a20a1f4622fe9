"""Plan targets: names to chips, hosts and topology; the compile-only devices libtpu gives for them."""
import jax
import pytest
from jax.experimental import topologies

from jaxrl_vlm.planning import targets
from jaxrl_vlm.planning.targets import parse_target, target_devices

GIB = 2**30


def test_tpu_names_count_cores_for_v4_v5p_and_chips_for_v5e_v6e():
    v5p = parse_target("v5p-128")
    assert (v5p.platform, v5p.topology, v5p.chips, v5p.hosts) == ("tpu", "v5p:4x4x4", 64, 16)
    assert (v5p.hbm_bytes, v5p.peak_flops, v5p.chip) == (95 * GIB, 459e12, "TPU v5p")
    assert (parse_target("v4-8").topology, parse_target("v4-8").chips) == ("v4:2x2x1", 4)
    assert parse_target("v5p-16").topology == "v5p:2x2x2"
    v5e = parse_target("v5e-256")
    assert (v5e.topology, v5e.chips, v5e.hosts, v5e.hbm_bytes) == ("v5e:16x16", 256, 64, 16 * GIB)
    assert parse_target("V5litepod-16 ").topology == "v5e:4x4"
    assert parse_target("v5litepod-16").name == "v5litepod-16"
    v6e = parse_target("v6e-8")
    assert (v6e.topology, v6e.chips, v6e.hosts, v6e.interconnect_bandwidth) == ("v6e:2x4", 8, 1, 400e9)
    assert v6e.dcn_bandwidth == v6e.interconnect_bandwidth


def test_gpu_names_are_nodes_of_gpus():
    node = parse_target("h100x8")
    assert (node.platform, node.topology, node.chips, node.hosts) == ("cuda", "1x1x8", 8, 1)
    assert (node.hbm_bytes, node.peak_flops, node.hbm_bandwidth) == (81559 * 2**20, 989e12, 3.35e12)
    assert (node.interconnect_bandwidth, node.dcn_bandwidth) == (450e9, 50e9)
    two = parse_target("2xh100x8")
    assert (two.topology, two.chips, two.hosts) == ("1x2x8", 16, 2)
    h200 = parse_target("h200x8")
    assert (h200.hbm_bytes, h200.hbm_bandwidth, h200.chip) == (143771 * 2**20, 4.8e12, "H200 SXM 141GB")
    assert (parse_target("h100x1").chips, parse_target("h100x4").topology) == (1, "1x1x4")


@pytest.mark.parametrize("name", ["v5p-12", "v5p-7", "v4-3", "v3-8", "v5e-2", "v6e-512", "h100x3", "3xh100x4",
                                  "a100x8", "0xh100x8", "", "tpu"])
def test_unknown_names_raise_value_error_without_touching_libtpu(name, monkeypatch):
    def no_topology(*args, **kwargs):
        raise AssertionError("parse_target must not build a topology")

    monkeypatch.setattr(topologies, "get_topology_desc", no_topology)
    with pytest.raises(ValueError, match="accepted: TPU: v4-N, v5p-N.*GPU: h100xG"):
        parse_target(name)


@pytest.mark.parametrize("name", ["v5p-128", "v5e-256", "v4-16", "v5e-8", "v6e-4", "v5e-1"])
def test_chips_and_hosts_match_the_topology_libtpu_builds(name):
    target = parse_target(name)
    devices = target_devices(target)
    assert len(devices) == target.chips
    assert len({d.process_index for d in devices}) == target.hosts
    assert all(d.platform == "tpu" for d in devices)
    kinds = {"v4": "TPU v4", "v5p": "TPU v5", "v5e": "TPU v5 lite", "v6e": "TPU v6 lite"}
    assert devices[0].device_kind == kinds[target.topology.split(":")[0]]


def test_missing_plugins_name_their_install_command(monkeypatch):
    def find_spec(name):  # as without libtpu and the CUDA plugin: no jax_plugins package at all
        if name.startswith("jax_plugins."):
            raise ModuleNotFoundError(name)
        return None

    monkeypatch.setattr(targets.importlib.util, "find_spec", find_spec)
    with pytest.raises(RuntimeError, match=rf"pip install 'jax\[tpu\]=={jax.__version__}'"):
        target_devices(parse_target("v5e-4"))
    with pytest.raises(RuntimeError, match=rf"pip install 'jax\[cuda12\]=={jax.__version__}'.*make install-cuda"):
        target_devices(parse_target("h100x8"))


@pytest.mark.parametrize("name", ["h100x8", "h200x8"])
def test_gpu_target_config_carries_the_chip_figures(name):
    target = parse_target(name)
    text = targets.gpu_target_config(target)
    assert f"device_memory_size: {target.hbm_bytes}\n" in text
    assert f"memory_bandwidth: {int(target.hbm_bandwidth)}\n" in text
    assert "core_count: 132\n" in text and "major: 9" in text
    assert "collective_memory_granularity" not in text  # jaxlib 0.10.2 cannot parse it
    assert text.count("{") == text.count("}")
