"""GeneralPoints: make the target (24) from 4 cards. Spec: generalpoints.md."""
from jaxrl_vlm.envs.general_points.env import (EnvParams, EnvState, Observation, feedback_fragment_texts, make_params,
                                               reset, reset_batch, step, step_batch)
from jaxrl_vlm.envs.general_points.prompt_tokens import (PromptCodec, TokenBatch, append_revision, build_prompt_codec,
                                                         gp_conversation, prompt_ids)
from jaxrl_vlm.envs.general_points.cards import CANVAS_SIZE, CARD_XS, card_atlas, load_card_folder, render_hands
from jaxrl_vlm.envs.general_points.sampling import SUITS, hand_numbers, sample_hands
from jaxrl_vlm.envs.general_points.solver import SolutionTable, solution_table, solutions
from jaxrl_vlm.envs.general_points.verifier import (REWARDS, STEP_LIMIT_FEEDBACK, STEP_LIMIT_REWARD, read_reply,
                                                    score_response)
from jaxrl_vlm.envs.general_points.verifier_device import (DeviceSolutionTable, VerifierOutput,
                                                           device_solution_table, score_bytes,
                                                           score_responses_on_device)

__all__ = [
    "EnvParams", "EnvState", "Observation", "PromptCodec", "TokenBatch", "append_revision", "build_prompt_codec",
    "gp_conversation", "make_params", "prompt_ids", "reset", "reset_batch", "step", "step_batch",
    "CANVAS_SIZE", "CARD_XS", "DeviceSolutionTable", "REWARDS", "STEP_LIMIT_FEEDBACK", "STEP_LIMIT_REWARD", "SUITS",
    "SolutionTable", "VerifierOutput", "card_atlas", "device_solution_table",
    "feedback_fragment_texts", "hand_numbers", "load_card_folder", "read_reply", "render_hands", "sample_hands",
    "score_bytes", "score_response", "score_responses_on_device", "solution_table", "solutions",
]
