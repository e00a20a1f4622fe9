"""V-IRL-L evaluation (spec virl.md §1.10) of the embedded default model on synthetic cities, sized for a 2-core CPU.

Make the route directories first (the real NYC data cannot be downloaded here):
  python -m jaxrl_vlm.envs.virl.make_city --out data/virl_train --seed 0 --routes 1000 --style soho --workers 2
  python -m jaxrl_vlm.envs.virl.make_city --out data/virl_ood --seed 1 --routes 18 --style milan,lagos,hongkong,london
then `python -m jaxrl_vlm.eval --config=configs/eval_virl.py [--config.eval.checkpoint=PATH]`.
in_distribution (absolute actions) and rule_ood (relative actions) draw routes of task.route_dir; visual_ood runs the
routes of task.ood_route_dir in file order (at most eval.episodes). The paper's setting: --config.eval.episodes=48
(visual OOD: the 18-route benchmark); V-IRL-VL: --config.task.language_only=False with a Mllama checkpoint.
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of a V-IRL evaluation job."""
    config = base_config(job="eval", run_name="eval_virl")
    config.seed = 12
    config.task.name = "virl"
    config.task.verify_iter = 2
    config.task.route_dir = "data/virl_train"
    config.task.ood_route_dir = "data/virl_ood"
    config.eval.splits = "in_distribution,rule_ood,visual_ood"
    config.eval.episodes = 8
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 256
    return config
