"""GeneralPoints: make the target (24) from 4 cards. Spec: generalpoints.md."""
from jaxrl_vlm.envs.general_points.cards import CANVAS_SIZE, CARD_XS, card_atlas, load_card_folder, render_hands
from jaxrl_vlm.envs.general_points.sampling import SUITS, hand_numbers, sample_hands
from jaxrl_vlm.envs.general_points.solver import SolutionTable, solution_table, solutions

__all__ = [
    "CANVAS_SIZE", "CARD_XS", "SUITS", "SolutionTable", "card_atlas", "hand_numbers", "load_card_folder",
    "render_hands", "sample_hands", "solution_table", "solutions",
]
