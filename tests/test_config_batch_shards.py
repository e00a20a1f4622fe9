"""Config validation of batch sizes against the mesh: every micro-batch is split over the batch shards (data x fsdp),
so a PPO or SFT micro-batch smaller than (or not a multiple of) them fails in `validate`, naming the key, instead of
inside the model after the weights have loaded."""
import pytest

from jaxrl_vlm import config as config_lib


def config_for(job, **values):
    config = config_lib.base_config(job=job, run_name="test")
    config.mesh.data = 1
    for key, value in values.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def test_ppo_micro_batch_must_cover_the_batch_shards():
    """8 episodes / (2 minibatches x 2 micro-batches) = 2 per micro-batch on 4 fsdp shards: rejected naming
    ppo.episodes; 1 micro-batch (4 per micro-batch) passes."""
    config_lib.validate(config_for("ppo", ppo__init="model.path", mesh__fsdp=4, ppo__micro_batches=1))
    with pytest.raises(ValueError, match=r"ppo\.episodes=8 .*2 x 2 x 4"):
        config_lib.validate(config_for("ppo", ppo__init="model.path", mesh__fsdp=4, ppo__micro_batches=2))


def test_data_minus_one_counts_the_devices():
    """data=-1 takes the 8 test devices that tensor=2 leaves: 4 batch shards."""
    assert config_lib.batch_shards(config_for("ppo", mesh__data=-1, mesh__tensor=2).mesh) == 4
    with pytest.raises(ValueError, match=r"ppo\.episodes"):
        config_lib.validate(config_for("ppo", ppo__init="model.path", mesh__data=-1, mesh__tensor=2,
                                       ppo__micro_batches=2))


def test_sft_micro_batch_must_cover_the_batch_shards():
    """16 sequences / 8 micro-batches = 2 per micro-batch on 4 shards: rejected naming sft.global_batch_size, for the
    SFT job and for the PPO job's SFT warm start; the SFT job ignores the PPO batch settings."""
    config_lib.validate(config_for("sft", mesh__fsdp=4, sft__micro_batches=4, ppo__micro_batches=2))
    for job in ("sft", "ppo"):
        with pytest.raises(ValueError, match=r"sft\.global_batch_size=16 .*8 x 4"):
            config_lib.validate(config_for(job, mesh__fsdp=4, sft__micro_batches=8))
