#!/usr/bin/env bash
# Run a job on every worker of a Cloud TPU pod slice (one JAX process per TPU VM host).
#   TPU=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh configs/sft_gp_vl.py --config.model.path=/mnt/ckpt/Llama-3.2-11B-Vision-Instruct --config.mesh.fsdp=16
# Assumes the repository is checked out at ~/jaxrl_vlm on every worker and the checkpoint is readable from each
# host (a mounted bucket or a local copy). JAX finds the pod's topology itself (jax.distributed.initialize()).
#
# Steps: (1) `make install-tpu` on every worker (the project and jax[tpu] at the versions of constraints.txt; the
# venv is made from $PYTHON3, default python3, which must be Python 3.11 or newer); (2) the plan on worker 0:
# `python -m jaxrl_vlm.plan` compiles the job's programs for the slice's accelerator type with the CPU backend,
# before any weight is loaded, and if a program does not fit in the chips' memory (exit 1) or the config cannot
# run on the slice (exit 2) the script stops there, with the plan's message and a non-zero exit status; (3) the job
# on every worker.
# The accelerator type is $ACCELERATOR_TYPE (as Cloud TPU spells it: v5p-128, v5litepod-256 or v5e-256, v6e-64,
# v4-32), else asked of `gcloud compute tpus tpu-vm describe`. SKIP_PLAN=1 skips step 2. The plan runs
# on worker 0 rather than here because the config's paths (model.path's config.json, ppo.init) are the workers'
# and libtpu, which it compiles with, is there; it touches no TPU (JAX_PLATFORMS=cpu). To plan before booking the
# slice, run the plan command yourself (README: "Plan before you book hardware").
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
config="${1:?usage: launch/tpu_pod.sh CONFIG [--config.x=y ...]}"
shift
overrides=""
if (($#)); then overrides=$(printf ' %q' "$@"); fi
config_q=$(printf '%q' "$config")
python3_=$(printf '%q' "${PYTHON3:-python3}")

skip_plan="${SKIP_PLAN:-0}"
if [[ "$skip_plan" != 1 ]]; then  # the accelerator type first: nothing is installed if it cannot be told
  accel="${ACCELERATOR_TYPE:-}"
  if [[ -z "$accel" ]]; then
    accel=$(gcloud compute tpus tpu-vm describe "$TPU" --zone "$ZONE" --format='value(acceleratorType)') || accel=
  fi
  if [[ -z "$accel" ]]; then
    echo "tpu_pod.sh: cannot tell the accelerator type of $TPU: set ACCELERATOR_TYPE (e.g. v5p-64), or SKIP_PLAN=1" >&2
    exit 2
  fi
fi

gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/jaxrl_vlm && make install-tpu PYTHON3=$python3_ VENV=.venv >/dev/null"

if [[ "$skip_plan" != 1 ]]; then
  echo "tpu_pod.sh: planning $config for $accel on worker 0 (SKIP_PLAN=1 skips this)" >&2
  status=0
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=0 --command "
    cd ~/jaxrl_vlm && JAX_PLATFORMS=cpu .venv/bin/python -m jaxrl_vlm.plan --config=$config_q$overrides \
      --target=$(printf '%q' "$accel")" || status=$?
  if ((status != 0)); then
    echo "tpu_pod.sh: the plan for $accel failed (exit $status, its message above); the job was not launched" >&2
    exit "$status"
  fi
fi

gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/jaxrl_vlm && .venv/bin/python -m jaxrl_vlm.main --config=$config_q --config.distributed=True$overrides"
