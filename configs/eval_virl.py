"""V-IRL-L evaluation (spec virl.md §1.10) of the embedded default model on synthetic cities, sized for a 2-core CPU.

`python -m jaxrl_vlm.eval --config=configs/eval_virl.py [--config.eval.checkpoint=PATH]`.
The route directories default to '': on first use the job builds synthetic cities under task.city_cache
(data/virl_cities/train: style soho, 1000 routes; data/virl_cities/ood: 18 routes over milan, lagos, hongkong and
london; seconds for V-IRL-L, minutes for V-IRL-VL's full-size panoramas) and reuses them afterwards; give
--config.task.route_dir=DIR / --config.task.ood_route_dir=DIR for other route directories (e.g. from
python -m jaxrl_vlm.envs.virl.make_city, or the real data).
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
    config.eval.splits = "in_distribution,rule_ood,visual_ood"
    config.eval.episodes = 8
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 256
    return config
