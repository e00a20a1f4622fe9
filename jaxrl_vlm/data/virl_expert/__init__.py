"""V-IRL expert SFT data: a TFDS builder (array_record, no TensorFlow) over expert rollouts of the host env."""
from jaxrl_vlm.data.virl_expert.builder import VirlExpert, VirlExpertConfig, build_expert_dataset, expert_config
from jaxrl_vlm.data.virl_expert.examples import ExpertStep, expert_steps

__all__ = ["ExpertStep", "VirlExpert", "VirlExpertConfig", "build_expert_dataset", "expert_config", "expert_steps"]
