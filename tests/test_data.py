"""Expert demonstrations as LeRobot datasets, read back through lerobot, and SFT on them."""

import json

import numpy as np
import pytest
import torch

from embodied.algos.sft import random_shift
from embodied.config import load_config
from embodied.data.dataset import DatasetMismatchError, DemoDataset, check_features
from embodied.data.record import RecordConfig, record
from embodied.runner.trainer import TrainConfig, Trainer
from policies.base import FeatureSpec


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "reach"
    summary = record(
        RecordConfig(task="Reach", episodes=64, root=str(root), num_envs=16, image_size=32, cameras=("front",)),
        progress=False,
    )
    return root, summary


def test_record_writes_a_lerobot_dataset_that_lerobot_reads(demos):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root, summary = demos
    assert summary["episodes"] == 64 and summary["expert_success_rate"] > 0.9
    dataset = LeRobotDataset("local/Reach", root=root, video_backend="pyav")
    assert dataset.num_episodes == 64 and dataset.num_frames == summary["frames"]
    for key in ("observation.images.front", "observation.state", "observation.environment_state", "action",
                "next.reward", "next.done", "next.success"):
        assert key in dataset.features
    assert dataset.features["observation.images.front"]["shape"][:2] == (32, 32)
    ends = np.asarray(dataset.hf_dataset["next.done"]).reshape(-1)
    episode = np.asarray(dataset.hf_dataset["episode_index"])
    last = np.r_[episode[1:] != episode[:-1], True]
    assert (ends == last).all(), "next.done is set exactly on each episode's last frame"
    assert np.asarray(dataset.hf_dataset["next.success"]).reshape(-1)[last].all(), "kept episodes end in success"
    assert dataset[0]["task"] in __import__("sims").tasks.TASKS["Reach"].instructions
    assert json.loads((root / "meta" / "record.json").read_text())["episodes"] == 64


def test_hold_steps_record_the_expert_at_the_goal_after_its_first_success(tmp_path):
    summary = record(RecordConfig(task="Reach", episodes=4, root=str(tmp_path / "hold"), num_envs=4, image_size=16,
                                  cameras=("front",), hold_steps=3, video=False), progress=False)
    data = DemoDataset(tmp_path / "hold", keys=["next.success", "next.done"], progress=False)
    success = data.data["next.success"].reshape(-1).bool()
    for episode in data.episode_index.unique().tolist():
        rows = (data.episode_index == episode).nonzero()[:, 0]
        first = int(success[rows].nonzero()[0, 0])
        assert len(rows) == first + 3 + 1, "the episode ends 3 steps after its first success"
        assert success[rows][first:].all(), "the expert stays at the goal"
    assert summary["episodes"] == 4


def test_in_memory_dataset_matches_lerobot_items(demos):
    root, summary = demos
    data = DemoDataset(root, progress=False)
    assert len(data) == summary["frames"]
    for i in (0, 7, len(data) - 1):
        item = data.lerobot[i]
        image = (item["observation.images.front"] * 255).round().to(torch.uint8).permute(1, 2, 0)
        assert torch.equal(image, data.data["observation.images.front"][i])
        assert torch.allclose(item["action"], data.data["action"][i])
        assert item["task"] == data.tasks[i]


def test_action_chunks_stop_at_episode_ends(demos):
    data = DemoDataset(demos[0], progress=False)
    last = int(data.episode_end[0])
    obs, actions, is_pad = data.batch(torch.tensor([last - 1]), chunk_size=4)
    assert is_pad[0].tolist() == [False, False, True, True]
    assert torch.equal(actions[0, 2], data.data["action"][last]) and torch.equal(actions[0, 3], data.data["action"][last])
    assert obs["observation.state"].shape == (1, 25) and isinstance(obs["task"], list)


def test_feature_mismatches_are_errors_that_name_them():
    features = {
        "observation.images.front": {"dtype": "video", "shape": (64, 64, 3)},
        "observation.state": {"dtype": "float32", "shape": (25,)},
        "action": {"dtype": "float32", "shape": (7,)},
    }
    check_features(features, FeatureSpec({"observation.images.front": (64, 64)}, ("observation.state",), 25, 7, 1))
    with pytest.raises(DatasetMismatchError, match="observation.images.wrist"):
        check_features(features, FeatureSpec({"observation.images.wrist": (64, 64)}, (), 0, 7, 1))
    with pytest.raises(DatasetMismatchError, match=r"\(64, 64, 3\); the policy expects \(128, 128, 3\)"):
        check_features(features, FeatureSpec({"observation.images.front": (128, 128)}, (), 0, 7, 1))
    with pytest.raises(DatasetMismatchError, match="25 dimensions; the policy expects 35"):
        check_features(features, FeatureSpec({}, ("observation.state",), 35, 7, 1))
    with pytest.raises(DatasetMismatchError, match="the policy emits 8"):
        check_features(features, FeatureSpec({}, ("observation.state",), 25, 8, 1))


def test_not_a_dataset_and_existing_root_are_clear(tmp_path, demos):
    with pytest.raises(FileNotFoundError, match="not a LeRobotDataset"):
        DemoDataset(tmp_path)
    with pytest.raises(FileExistsError, match="--overwrite"):
        record(RecordConfig(task="Reach", episodes=1, root=str(demos[0])), progress=False)


def test_random_shift_moves_content_and_keeps_shape():
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(8, 16, 16, 3, dtype=torch.uint8)
    images[:, 6:10, 6:10] = 255
    shifted = random_shift(images, 3, generator)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    centres = [(s[..., 0] > 0).nonzero().float().mean(0) for s in shifted]
    assert any((c - torch.tensor([7.5, 7.5])).abs().max() > 0.5 for c in centres)
    assert all(((s[..., 0] > 0).sum() == 16) for s in shifted), "a shift inside the padding keeps the square whole"


def test_sft_clones_the_reach_expert_and_freezes_dataset_statistics(demos, tmp_path):
    root, _ = demos
    cfg = load_config(TrainConfig, "configs/sft_pickcube_mlp.yaml", [
        "env.task=Reach", f"algo.dataset={root}", f"run_dir={tmp_path / 'run'}", "algo.total_updates=600",
        "algo.updates_per_iteration=100", "eval.every=0", "eval.episodes=32", "log.final_video=false",
        "log.progress_bar=false", "log.tensorboard=false", "algo.shift_pixels=0",
    ])
    trainer = Trainer(cfg)
    data = trainer.algo.dataset
    mean, _ = data.statistics("observation.state")
    assert torch.allclose(trainer.policy.normalizer.mean[:25], mean)
    before, _ = trainer.policy.supervised_loss(*data.batch(torch.arange(len(data)), 1)[:2])
    final = trainer.train()
    after, _ = trainer.policy.supervised_loss(*data.batch(torch.arange(len(data)), 1)[:2])
    assert float(after.detach()) < 0.3 * float(before.detach())
    assert final["episodes"] == 32 and final["success_rate"] >= 0.25  # an untrained policy: 0
    assert (tmp_path / "run" / "eval.json").is_file()
