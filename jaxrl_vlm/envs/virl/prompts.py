"""V-IRL protocol strings (spec virl.md §1.7, §1.9), rendered on the host. Byte-exact with the reference."""
from __future__ import annotations

from typing import Sequence

Q_VIRL_L = """
[Task Description]
You are an expert in navigation. You will receive a sequence of instructions to follow. You
are also provided with your observation and action history in text. Your goal is to first analyze the instruction and identify the next sentence to be executed. 
Then, you need to provide the action to be taken based on the current observation and instruction.

[Instruction]
{instruction}

[Action space]
{action_space}

[Observations and actions sequence]
{obs_act_seq}

[Output]
{{
  "current observation": latest observation from the observation sequence,
  "current instruction": analyze the full instruction and identify the sentence to be executed,
  "action": the action to be taken chosen from the action space,
}}
"""

Q_VIRL_VL = """
[Task Description]
You are an expert in navigation. You will receive a sequence of instructions to follow while observing your surrounding stree tviews. You
are also provided with your observation and action history in text. Your goal is to first analyze the instruction and identify the next sentence to be executed. 
Then, you need to provide the action to be taken based on the current observation and instruction.

[Instruction]
{instruction}

[Observation format]
You observe a 2x2 grid of streetview images with the following headings:
[front, right
 back, left]
You need to identify if any of the landmarks in the instruction are visible in the street view grid.

[Action space]
{action_space}

[Observations and actions sequence]
{obs_act_seq}

[Output]
{{
  "current observation": latest observation from the street view grid,
  "current instruction": analyze the full instruction and identify the sentence to be executed,
  "action": the action to be taken chosen from the action space,
}}
"""

RESPONSE_VIRL = """
{{
  "current observation": "{current_observation}",
  "current instruction": "{current_instruction}",
  "action": "{action}",
}}
"""

ACTION_SPACE_ABSOLUTE = """"forward()": indicates moving forward one step
"turn_direction(x)": indicates adjust the ego agent direction towards x direction. x could be any following 8 directions ['north', 'northeast', 'east', 'southeast', 'south', 'southwest', 'west', 'northwest']
"stop()": indicates the navigation is finished."""

ACTION_SPACE_RELATIVE = """"forward()": indicates moving forward one step
"turn_direction(x)": indicates adjust the ego agent direction towards x direction. x could be any following ['left', 'right', 'slightly left', 'slightly right']
"stop()": indicates the navigation is finished."""

FEEDBACK_PREFIX = "You failed this trial because "
VL_CURRENT_OBSERVATION = "You observe an image of 4 views; "
INTERSECTION_TEXT = "You observe an intersection"


def action_space_text(absolute_action: bool) -> str:
    """The action-space text of `set_str_action_space`."""
    return ACTION_SPACE_ABSOLUTE if absolute_action else ACTION_SPACE_RELATIVE


def observation_action_sequence(observations: Sequence[str], actions: Sequence[str], vision: bool) -> str:
    """The reference `get_observation_action_sequence` (observations has one more entry than actions)."""
    out = "".join(f"O_{i + 1}: {o}\nA_{i + 1}: {a}\n" for i, (a, o) in enumerate(zip(actions, observations)))
    if len(observations) > len(actions):
        n = len(observations)
        if vision:
            inter = INTERSECTION_TEXT if INTERSECTION_TEXT in observations[-1] else ""
            out += f"O_{n}: {VL_CURRENT_OBSERVATION}{inter}\nA_{n}: \n"
        else:
            out += f"O_{n}: {observations[-1]}\nA_{n}: \n"
    return out


def render_prompt(instruction: str, absolute_action: bool, obs_act_seq: str, vision: bool) -> str:
    """Q_VIRL_L (or Q_VIRL_VL) filled with the global instruction, action space and history."""
    template = Q_VIRL_VL if vision else Q_VIRL_L
    return template.format(instruction=instruction, action_space=action_space_text(absolute_action),
                           obs_act_seq=obs_act_seq)


def expert_response(current_observation: str, current_instruction: str, action: str) -> str:
    """The ResponseVIRL template filled with the oracle observation, current sentence and ground-truth action."""
    return RESPONSE_VIRL.format(current_observation=current_observation, current_instruction=current_instruction,
                                action=action)
