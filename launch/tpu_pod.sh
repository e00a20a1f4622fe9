#!/usr/bin/env bash
# Run a job on every worker of a Cloud TPU pod slice (one JAX process per TPU VM host).
#   TPU=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh configs/sft_gp_vl.py --config.model.path=/mnt/ckpt/Llama-3.2-11B-Vision-Instruct --config.mesh.fsdp=16
# Assumes the repository is checked out at ~/jaxrl_vlm on every worker and the checkpoint is readable from each
# host (a mounted bucket or a local copy). JAX finds the pod's topology itself (jax.distributed.initialize()).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
config="${1:?usage: launch/tpu_pod.sh CONFIG [--config.x=y ...]}"
shift
overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/jaxrl_vlm && make install VENV=.venv >/dev/null && .venv/bin/pip install -q 'jax[tpu]' &&
  .venv/bin/python -m jaxrl_vlm.main --config=$config --config.distributed=True$overrides"
