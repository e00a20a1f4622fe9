"""GeneralPoints: make the target (24) from 4 cards. Spec: generalpoints.md."""
from jaxrl_vlm.envs.general_points.sampling import SUITS, hand_numbers, sample_hands
from jaxrl_vlm.envs.general_points.solver import SolutionTable, solution_table, solutions

__all__ = ["SUITS", "SolutionTable", "hand_numbers", "sample_hands", "solution_table", "solutions"]
