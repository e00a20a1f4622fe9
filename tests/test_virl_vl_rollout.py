"""V-IRL-VL on the device rollout: every conversation shows its rail point's 2x2 view grid, rendered, preprocessed
and encoded inside the rollout's jit.

- A scripted model (`virl_scripted`, vision mode) answers from the prompt text and the images the rollout hands its
  `image_extra`; replayed through the host env, the same replies give the same rewards and outcomes, each played
  conversation's image is the host's render of that conversation's point (pano, heading), and each conversation is
  the chat template's rendering of [image, Q_VIRL_VL text]. Destinations have white panoramas, the other panoramas
  are noise, so the oracle can only finish a route by seeing the destination, and a wrong pano or heading shows.
- A tiny random Mllama rolls out greedily; each reply's log-probs equal teacher forcing of the same conversation
  through the host path (PIL preprocessing, `MllamaModel.vision_inputs`, `model.logits`) with the host's grid.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
import virl_scripted as vs
from PIL import Image
from tiny_models import MULTIMODAL_CHATML
from virl_host_eval import virl_conversation
from virl_replay import model_eos, replay, reply_text
from virl_routes import SMALL_CITY_DESTINATIONS, write_small_city

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.virl.env import episode_randomness, max_legs
from jaxrl_vlm.envs.virl.evaluation import load_templates
from jaxrl_vlm.envs.virl.host_env import HostNavigationEnv
from jaxrl_vlm.envs.virl.observation import PanoramaStore
from jaxrl_vlm.envs.virl.task import make_task
from jaxrl_vlm.models import api
from jaxrl_vlm.models.token_bytes import token_byte_table

VIEW, RESOLUTION = 16, 24  # 16 px views resized to 24 px: a 53 px grid (the spec's 640 -> 1200 px in miniature)
PANO_SIZE = (64, 32)
MAX_NEW = 72
SCRIPT = [(vs.oracle, 0), (vs.oracle, 1), (vs.oracle, 2), (vs.retry, 1), (vs.fail_at(2), 0), (vs.wrong, 2)]
ROWS = len(SCRIPT)


def pano_image(index: int, pano_id: str) -> Image.Image:
    if pano_id in SMALL_CITY_DESTINATIONS:
        return Image.new("RGB", PANO_SIZE, (255, 255, 255))
    noise = np.random.default_rng(index).integers(0, 250, (PANO_SIZE[1], PANO_SIZE[0], 3), dtype=np.uint8)
    return Image.fromarray(noise)


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    return str(write_small_city(tmp_path_factory.mktemp("virl_vl_city"), pano_image))


@pytest.fixture(scope="module")
def city(city_dir):
    """(templates, host grid renderer (pano index, heading) -> uint8 grid)."""
    route_set, templates = load_templates(city_dir)
    store = PanoramaStore(route_set, templates)
    return templates, lambda pano, heading: np.asarray(store.grids(jnp.asarray([pano]), jnp.asarray([heading]),
                                                                   VIEW, RESOLUTION))[0]


def reset_rows(env, params, routes, seed):
    """Device reset states of routes (one row each) and, per row, its initial heading and drop draws (the reset
    key's episode half, as `VirlEnv.reset` draws them) for resetting a host env the same way."""
    keys = jax.random.split(jax.random.key(seed), len(routes))
    state = jax.jit(jax.vmap(env.env.reset, in_axes=(0, None, 0)))(keys, params.env, jnp.asarray(routes, jnp.int32))
    heading0, draws = jax.vmap(lambda k: episode_randomness(jax.random.split(k)[1], max_legs(params.env)))(keys)
    return state, np.asarray(heading0), np.asarray(draws)


@pytest.fixture(scope="module")
def scripted(smollm2_tokenizer, city_dir, city):
    """The scripted rollout of SCRIPT and its host replay: (episodes, host episodes, model)."""
    templates, _ = city
    tokenizer = smollm2_tokenizer
    env, params = make_task(tokenizer, "in_distribution", city_dir, verify_iter=2, vision=True, view_size=VIEW,
                            resolution=RESOLUTION, template_kwargs={"chat_template": MULTIMODAL_CHATML})
    assert env.vision and env.image(jax.tree.map(lambda x: x[0], reset_rows(env, params, [0], 0)[0]),
                                    params).shape == (2 * RESOLUTION + 5,) * 2 + (3,)
    model = vs.ScriptedVirlModel(tokenizer, vision=True).reset(vs.per_row([policy for policy, _ in SCRIPT]))
    routes = [route for _, route in SCRIPT]
    state, heading0, draws = reset_rows(env, params, routes, 7)
    ep = jax.device_get(rollout_lib.rollout(
        env, model.decoder, model.params, params, token_byte_table(tokenizer, "empty"), state, jax.random.key(0),
        jnp.float32(0.0), jnp.float32(1.0), jnp.asarray(model.eos_token_ids, jnp.int32), max_new_tokens=MAX_NEW,
        pad_id=model.pad_id))
    hosts = []
    for b, route in enumerate(routes):
        host = HostNavigationEnv(templates, absolute_action=True, verify_iter=2, vision=True)
        host.reset(route, int(heading0[b]), draws[b][:templates[route].num_legs])
        hosts.append(replay(tokenizer, ep, b, host, env.turns, model_eos(tokenizer)))
    return ep, hosts, model


def test_rewards_and_outcomes_equal_the_host_replay(scripted):
    """Per reply the device reward is the host verifier's, per episode success and step counts are the host's, and
    the oracle finishes every route: it told each destination from its image (white), the only way to know it."""
    ep, hosts, model = scripted
    assert model.not_understood == [] and not ep.overflow.any()
    for b, host in enumerate(hosts):
        assert host.missing is None, (b, host.missing)
        assert all(c.rewards == c.device_rewards for c in host.conversations), b
        hits, trials = (int(x[b]) for x in ep.counts["step_accuracy"])
        assert (bool(ep.success[b]), trials, hits) == (host.success, host.steps, host.correct), b
    assert [h.success for h in hosts] == [True, True, True, True, False, False]
    assert hosts[4].forced not in (None, "stop()") and len(hosts[5].conversations) == 1


def test_every_conversation_shows_its_points_grid(scripted, city):
    """The image of row b's conversation r (logged by the scripted `image_extra`, one round of rows per call) is
    the host's render of the point the host replay was at when that conversation opened, at its heading."""
    ep, hosts, model = scripted
    _, render = city
    rounds = len(model.images)
    assert rounds == max(len(h.conversations) for h in hosts) and rounds > 3
    checked = 0
    for b, host in enumerate(hosts):
        for r, conversation in enumerate(host.conversations):
            np.testing.assert_array_equal(model.images[r][b], render(*conversation.view), err_msg=f"row {b}, {r}")
            checked += 1
    views = {c.view for h in hosts for c in h.conversations}
    assert checked == int(ep.turn_valid[:, :, 0].sum()) and len({pano for pano, _ in views}) > 5


def test_conversations_are_the_chat_template_rendering_with_the_image(scripted, smollm2_tokenizer):
    """Each played conversation in the cache decodes to the template's rendering of [image, Q_VIRL_VL text] and,
    after a wrong reply, the reply and the verifier's feedback; up to each reply."""
    ep, hosts, _ = scripted
    tokenizer = smollm2_tokenizer
    b_, r_, c_ = ep.slot_tokens.shape
    ids, _ = rollout_lib.compact(ep.slot_tokens.reshape(b_ * r_, c_), ep.slot_valid.reshape(b_ * r_, c_), c_, 0)
    ids = np.asarray(ids).reshape(b_, r_, c_)
    for b, host in enumerate(hosts):
        for r, conv in enumerate(host.conversations):
            for t in range(len(conv.replies)):
                messages = virl_conversation(conv.prompt, conv.replies[:t], conv.feedbacks[:t], vision=True)
                expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                         chat_template=MULTIMODAL_CHATML)
                start = int(ep.reply_start[b, r, t])
                assert tokenizer.decode(ids[b, r, :start].tolist(), clean_up_tokenization_spaces=False) == expected
                assert expected.startswith("<|im_start|>user\n<|image|>\n[Task Description]")


def test_tiny_mllama_rollout_log_probs_equal_host_teacher_forcing(tiny_mllama_checkpoint, city_dir, city):
    """The device path (grid rendered in the rollout, `preprocess_on_device`, vision tower and cross-attention K/V,
    the mask over the prefill's cache slots, continuation after feedback) scores each greedy reply as the host path
    does: PIL preprocessing of the host's grid and a full forward over the same tokens."""
    templates, render = city
    model = api.load(tiny_mllama_checkpoint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_mllama_checkpoint)
    env, params = make_task(tokenizer, "in_distribution", city_dir, verify_iter=2, vision=True, view_size=VIEW,
                            resolution=RESOLUTION)
    assert env.prompt_width > rollout_lib.PREFILL_CHUNK  # chunked prefill: the mask must follow the slots
    routes = [0, 1]
    state, heading0, draws = reset_rows(env, params, routes, 3)
    ep = jax.device_get(rollout_lib.rollout(
        env, model.decoder, model.params, params, token_byte_table(tokenizer, "empty"), state, jax.random.key(0),
        jnp.float32(0.0), jnp.float32(1.0), jnp.asarray(model.eos_token_ids, jnp.int32), max_new_tokens=6,
        pad_id=model.pad_id))
    b_, r_, c_ = ep.slot_tokens.shape
    ids, _ = rollout_lib.compact(ep.slot_tokens.reshape(b_ * r_, c_), ep.slot_valid.reshape(b_ * r_, c_), c_, 0)
    ids = np.asarray(ids).reshape(b_, r_, c_)
    checked = 0
    for b, route in enumerate(routes):
        host = HostNavigationEnv(templates, absolute_action=True, verify_iter=2, vision=True)
        host.reset(route, int(heading0[b]), draws[b][:templates[route].num_legs])
        grid = render(host.point.pano, host.point.heading)
        for t in np.flatnonzero(ep.turn_valid[b, 0]):
            start, length = int(ep.reply_start[b, 0, t]), int(ep.reply_len[b, 0, t])
            tokens = np.concatenate([ids[b, 0, :start], ep.reply_tokens[b, 0, t, :length]])[None]
            logits = model.logits(tokens, np.ones_like(tokens, bool), **model.vision_inputs([[grid]], tokens))
            logp = jax.nn.log_softmax(logits[0, start - 1:start + length - 1], axis=-1)
            expected = np.take_along_axis(np.asarray(logp), ep.reply_tokens[b, 0, t, :length, None], axis=-1)[:, 0]
            np.testing.assert_allclose(ep.sample_logp[b, 0, t, :length], expected, atol=2e-4, err_msg=f"{b}, {t}")
            checked += 1
    assert checked >= 3  # a second turn continues the cache after the feedback
