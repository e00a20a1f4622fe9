#!/usr/bin/env bash
# N JAX processes on this machine, each with D CPU devices, forming one N*D-device mesh: the same code path as a
# TPU pod or a multi-node GPU job, for trying a config's sharding on a laptop.
#   N=2 D=4 bash launch/local_multiprocess.sh configs/sft_gp.py --config.sft.steps=4 --config.mesh.fsdp=2
set -euo pipefail
config="${1:?usage: launch/local_multiprocess.sh CONFIG [--config.x=y ...]}"
shift
n="${N:-2}"; d="${D:-4}"; port="${PORT:-12355}"
python="${PYTHON:-.venv/bin/python}"
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$d" JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES=gloo \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    "$python" -m jaxrl_vlm.main --config="$config" --config.distributed=True "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
