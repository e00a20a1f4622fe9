"""GeneralPoints expert SFT data: a TFDS builder (array_record, no TensorFlow) and a reference-JSON exporter."""
from jaxrl_vlm.data.gp_expert.builder import GpExpert, GpExpertConfig, build_expert_dataset, expert_config
from jaxrl_vlm.data.gp_expert.examples import ExpertExamples, expert_examples
from jaxrl_vlm.data.gp_expert.reference_json import reference_record, write_reference_json

__all__ = [
    "ExpertExamples", "GpExpert", "GpExpertConfig", "build_expert_dataset", "expert_config", "expert_examples",
    "reference_record", "write_reference_json",
]
