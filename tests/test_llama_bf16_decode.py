"""bfloat16 inference on the CPU backend: the uint16-bitcast cache write (`update_slice`) against
`lax.dynamic_update_slice` and only in CPU programs, and a bf16 KV-cache decode against a bf16 full recomputation."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.models import api
from jaxrl_vlm.models.layers import update_slice
from llama_test_utils import left_padded_batch, tiny_hf_llama


def test_update_slice_equals_dynamic_update_slice():
    rng = np.random.RandomState(1)
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
        operand = jnp.asarray(rng.randn(3, 8, 2), dtype)
        update = jnp.asarray(rng.randn(3, 2, 2), jnp.float32)
        start = (0, jnp.int32(5), 0)
        ours = jax.jit(update_slice)(operand, update, start)
        theirs = jax.lax.dynamic_update_slice(operand, update.astype(dtype), start)
        assert ours.dtype == dtype
        np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))


def test_update_slice_workaround_follows_the_lowering_platform():
    """The uint16 bitcasts are XLA:CPU's workaround only: a bf16 cache write lowered for TPU or GPU from this CPU host
    is the plain dynamic-update-slice (fails if the path is chosen from the host's backend at trace time, issue 12
    (b)), and the CPU lowering keeps it."""
    f = jax.jit(lambda o, u, i: update_slice(o, u, (0, i, 0)))
    args = (jax.ShapeDtypeStruct((2, 16, 8), jnp.bfloat16), jax.ShapeDtypeStruct((2, 1, 8), jnp.bfloat16),
            jax.ShapeDtypeStruct((), jnp.int32))
    for platform, bitcasts in (("cpu", True), ("tpu", False), ("cuda", False)):
        module = jax.export.export(f, platforms=[platform])(*args).mlir_module()
        assert ("bitcast_convert" in module) == bitcasts, platform


def test_bfloat16_cache_decode_matches_full_recomputation(tmp_path):
    tiny_hf_llama(str(tmp_path), tied=True, seed=5)
    model = api.load(str(tmp_path), dtype="bfloat16")
    ids, mask = left_padded_batch(np.random.RandomState(0), [5, 9, 2], model.config.vocab_size)
    n_new = 8
    out = api.sample(model, ids, mask, max_new_tokens=n_new)
    gen_mask = (np.arange(n_new)[None] < out.lengths[:, None]).astype(np.int32)
    logits = model.logits(np.concatenate([ids, out.tokens], 1), np.concatenate([mask, gen_mask], 1))
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits[:, ids.shape[1] - 1:-1], jnp.float32), axis=-1))
    chosen = np.take_along_axis(logp, out.tokens[..., None], -1)[..., 0]
    valid = gen_mask.astype(bool)
    # Greedy under bf16 rounding: each token is (near-)argmax of the recomputation and its log-prob agrees.
    assert (logp.max(-1) - chosen)[valid].max() < 5e-2
    np.testing.assert_allclose(chosen[valid], out.logprobs[valid], atol=5e-2)
