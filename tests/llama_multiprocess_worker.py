"""One process of the two-process test: 4 CPU devices here, 8 in the global (data=2, fsdp=2, tensor=2) mesh.

argv: process_id port checkpoint_dir inputs.npz output.npz
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    process_id, port, checkpoint, inputs, output = sys.argv[1:]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=int(process_id))
    from jaxrl_vlm.models import api

    assert jax.device_count() == 8 and jax.local_device_count() == 4
    model = api.load(checkpoint, mesh={"data": 2, "fsdp": 2, "tensor": 2})
    data = np.load(inputs)
    logits = model.logits(data["ids"], data["mask"])
    first = api.sample(model, data["ids"], data["mask"], max_new_tokens=6, capacity=8)
    second = api.continue_sampling(model, first.state, data["turn_ids"], data["turn_mask"], max_new_tokens=6)
    if jax.process_index() == 0:
        np.savez(output, logits=logits, tokens=first.tokens, turn_tokens=second.tokens)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
