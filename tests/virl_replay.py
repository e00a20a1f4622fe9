"""Replaying a device V-IRL rollout through the host env (`envs.virl.host_env`): the same replies, fed in the order
the conversation protocol plays them (spec virl.md §1.6-1.9), give the host's rewards, messages and outcomes, and each
conversation's rail point (its view, for V-IRL-VL)."""
from __future__ import annotations

import dataclasses

from jaxrl_vlm.envs.virl.host_env import HostNavigationEnv


@dataclasses.dataclass
class HostConversation:
    """One conversation as the host replay played it: the prompt it opened with, its rail point's view (pano index,
    heading), each reply's text, the verifier's message on it, the host's and the device's reward, and the reply's
    (conversation, turn) place in the device arrays."""

    prompt: str
    view: tuple[int, int]
    replies: list[str] = dataclasses.field(default_factory=list)
    feedbacks: list[str] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)
    device_rewards: list[float] = dataclasses.field(default_factory=list)
    positions: list[tuple[int, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class HostEpisode:
    conversations: list[HostConversation]
    success: bool = False
    steps: int = 0  # env steps: replies and the forced failure
    correct: int = 0
    forced: str | None = None  # the ground-truth action of the point whose budget ran out
    missing: tuple[int, int] | None = None  # where the host expected a reply the device did not play


def model_eos(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids("<|im_end|>")


def reply_text(tokenizer, ep, b, r, t, eos) -> tuple[list[int], bool, str]:
    """(reply token ids without a final stop token, whether it stopped, its text as the env reads it)."""
    tokens = ep.reply_tokens[b, r, t, :ep.reply_len[b, r, t]].tolist()
    stopped = bool(tokens) and tokens[-1] == eos
    tokens = tokens[:-1] if stopped else tokens
    return tokens, stopped, tokenizer.decode(tokens, clean_up_tokenization_spaces=False)


def replay(tokenizer, ep, b, host: HostNavigationEnv, turns: int, eos: int) -> HostEpisode:
    """Feed row b's device replies to the host env in the order the protocol (spec §1.9) plays them: after a
    correct move the next reply opens conversation r + 1, after a wrong one it continues conversation r, and
    after `turns` wrong replies the forced failure (an env step without a reply) ends the episode (§1.6)."""
    episode, r, t = HostEpisode([]), 0, 0
    while True:
        if t == 0:
            episode.conversations.append(HostConversation(host.prompt(), (host.point.pano, host.point.heading)))
        conv = episode.conversations[-1]
        if not ep.turn_valid[b, r, t]:
            episode.missing = (r, t)
            return episode
        _, _, text = reply_text(tokenizer, ep, b, r, t, eos)
        gt = host.point.gt_action
        reward, terminated, truncated, info = host.step(text)
        assert not truncated
        episode.steps += 1
        episode.correct += reward == 1.0
        conv.replies.append(text)
        conv.feedbacks.append(info["Verify Info"])
        conv.rewards.append(reward)
        conv.device_rewards.append(float(ep.reward[b, r, t]))
        conv.positions.append((r, t))
        if terminated:
            episode.success = host.is_success
            return episode
        if reward == 1.0:
            r, t = r + 1, 0
        elif t + 1 < turns:
            t += 1
        else:
            reward, terminated, truncated, info = host.step("")  # the model's reply is not read (§1.6)
            episode.steps += 1
            assert reward == -1.0 and truncated and terminated == (gt == "stop()")
            episode.forced = gt
            return episode
