"""The deployment runner: chunk execution, recording, interventions, console, the CLI."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import torch

from embodied.cli import main
from policies.mlp import MLPPolicy, MLPPolicyConfig
from real_robot.deploy import ActionChunker, DeployConfig, KeyboardCorrector, LiveDisplay, deploy
from real_robot.safety import SafetyConfig, SafetyLayer
from real_robot.sim_robot import SimRobot, SimRobotConfig


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("deploy") / "policy"
    MLPPolicy(MLPPolicyConfig(obs_dim=31, action_dim=7, chunk_size=4, hidden_sizes=(16,))).save_pretrained(path)
    return path


def sim(**safety):
    return SafetyLayer(SimRobot(SimRobotConfig(task="Reach")), SafetyConfig(**safety))


def load_dataset(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/deploy", root=root)


def test_chunker_queue_executes_then_replans():
    chunker = ActionChunker("queue", actions_per_chunk=2)
    assert chunker.needs_chunk()
    chunker.add(np.arange(12, dtype=np.float32).reshape(4, 3))
    assert chunker.next_action().tolist() == [0, 1, 2]
    assert not chunker.needs_chunk()
    assert chunker.next_action().tolist() == [3, 4, 5]
    assert chunker.needs_chunk()  # only 2 of the 4 actions are executed
    chunker.add(np.ones((4, 3)))
    chunker.flush()
    assert chunker.needs_chunk()


def test_chunker_temporal_ensembling_weights():
    chunker = ActionChunker("ensemble", decay=0.5)
    chunker.add(np.zeros((3, 1)))  # tick 0: predicts 0, 0, 0
    assert chunker.next_action()[0] == 0.0
    chunker.add(np.ones((3, 1)))  # tick 1: predicts 1, 1, 1
    w = np.exp(-0.5 * np.arange(2))  # oldest first
    assert chunker.next_action()[0] == pytest.approx(w[1] / w.sum())
    chunker.add(np.full((3, 1), 2.0))
    w3 = np.exp(-0.5 * np.arange(3))
    assert chunker.next_action()[0] == pytest.approx((w3 * [0, 1, 2]).sum() / w3.sum())
    chunker.add(np.full((3, 1), 3.0))  # the tick-0 chunk (3 long) no longer covers tick 3
    assert chunker.next_action()[0] == pytest.approx((w3 * [1, 2, 3]).sum() / w3.sum())


def test_deploy_records_episodes_with_scripted_takeovers(policy_dir, tmp_path):
    cfg = DeployConfig(
        policy=str(policy_dir), episodes=2, max_steps=15, realtime=False, record=str(tmp_path / "data"),
        intervention="scripted", intervention_start=5, intervention_steps=4, display=False,
    )
    robot = sim()
    summary = deploy(robot, cfg)
    assert summary["aborted"] is None and summary["episodes"] == 2 and summary["steps"] == 30
    assert summary["intervention_steps"] == 8 and summary["recorded_frames"] == 30
    assert summary["policy_metadata"]["chunk_size"] == 4
    assert not robot.is_connected  # disconnected at the end
    dataset = load_dataset(tmp_path / "data")
    assert dataset.num_episodes == 2 and dataset.num_frames == 30
    flags = np.array([bool(dataset[i]["complementary_info.is_intervention"].reshape(-1)[0]) for i in range(30)])
    expected = np.zeros(15, dtype=bool)
    expected[5:9] = True
    np.testing.assert_array_equal(flags, np.concatenate([expected, expected]))
    assert dataset[0]["observation.state"].shape == (25,) and dataset[0]["action"].shape == (7,)
    from embodied.data.replay import from_lerobot

    buffer = from_lerobot(tmp_path / "data")  # the off-policy / o2o recipes read it with its takeover flags
    assert int(buffer.intervention.sum()) == 8


def test_deploy_realtime_rate_and_ensembling(policy_dir):
    cfg = DeployConfig(policy=str(policy_dir), max_steps=12, chunking="ensemble", display=False)
    start = time.perf_counter()
    summary = deploy(sim(), cfg)
    elapsed = time.perf_counter() - start
    assert summary["steps"] == 12 and summary["aborted"] is None
    assert 11 / 20 - 0.05 < elapsed < 2.0  # paced at 20 Hz
    assert summary["jitter_ms_p99"] < 50.0  # generous: the machine is shared
    assert summary["safety_events"].get("drop", 0) == 0  # the rate limit lets a 20 Hz loop through


def test_keyboard_corrector_from_a_pipe():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        corrector = KeyboardCorrector(7, stream=stream, force=True)
        corrector.start()
        assert corrector.act({}, 0) is None
        os.write(write_fd, b"twc")
        deadline = time.time() + 2
        while (corrector.gripper != -1.0 or not corrector.active) and time.time() < deadline:
            time.sleep(0.01)
        action = corrector.act({}, 1)
        corrector.stop()
    os.close(write_fd)
    assert action is not None and action[0] == 1.0 and action[-1] == -1.0


def test_live_display_on_a_tty_like_stream():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    display = LiveDisplay(stream)
    display.tick(0, 3, 20.0, 1.5, 0, 2, "policy")
    display.line("episode 0: success")
    text = stream.getvalue()
    assert text.startswith("\repisode 0 step    3 | ") and "safety events   2" in text and "episode 0: success" in text


def test_cli_deploy_with_local_checkpoint(policy_dir, tmp_path, capsys):
    summary = tmp_path / "summary.json"
    code = main([
        "deploy", "--robot", "configs/robots/sim_reach.yaml", "--policy", str(policy_dir), "--max-steps", "5",
        "--episodes", "2", "--no-realtime", "--summary", str(summary), "safety.watchdog_timeout_s=0.5",
    ])
    assert code == 0
    assert "over 2 episodes, 10 steps" in capsys.readouterr().out
    assert summary.is_file()
    assert main(["deploy", "--robot", "configs/robots/sim_reach.yaml", "--policy", str(tmp_path / "nothing")]) == 1
