"""A GP rollout whose replies could exceed the verifier's byte limit (max_new_tokens x the tokenizer's longest token
> 32768 bytes, e.g. the reference's 512 new tokens with a tokenizer holding 81-byte tokens) still builds: the
rollout cuts the reply bytes at the task's `max_reply_bytes`. Traced only (jax.eval_shape), nothing compiles."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.general_points.task import make_task
from jaxrl_vlm.models import api
from jaxrl_vlm.models.token_bytes import TokenByteTable, token_byte_table
from jaxrl_vlm.models.tokenizer import load_tokenizer


def test_long_token_byte_strings_fit_the_verifier(tiny_checkpoint):
    model = api.load(tiny_checkpoint)
    tokenizer = load_tokenizer(tiny_checkpoint)
    env, env_params = make_task(tokenizer, "in_dist", verify_iter=2)
    table = token_byte_table(tokenizer, special_tokens="empty")
    wide = TokenByteTable(np.pad(table.bytes, ((0, 0), (0, 4096 - table.bytes.shape[1]))), table.lengths)
    max_new_tokens = 16  # 16 x 4096 = 65536 bytes a reply at most: twice what score_bytes reads
    assert max_new_tokens * wide.bytes.shape[1] > env.max_reply_bytes
    state = protocol.reset_batch(env, jax.random.key(0), env_params, 2, 0)
    out = jax.eval_shape(
        lambda params, st: rollout_lib.rollout(env, model.decoder, params, env_params, wide, st, jax.random.key(1),
                                               jnp.float32(1.0), jnp.float32(1.0), jnp.asarray([2], jnp.int32),
                                               max_new_tokens=max_new_tokens, pad_id=model.pad_id),
        model.params, state)
    assert out.reply_tokens.shape == (2, 1, 2, max_new_tokens)
