"""The ManiSkill3 backend. Its static pieces (task table, observation and state conversion,
config checks) are tested everywhere; building a SAPIEN scene needs a Vulkan device SAPIEN
accepts (an NVIDIA GPU), so those tests skip with SAPIEN's own message where there is none."""

import pytest
import torch

import sims
from sims.maniskill.env import (
    ManiSkillBatchedEnv,
    ManiSkillUnavailable,
    convert_obs,
    flatten_state,
    unflatten_state,
)
from sims.maniskill.tasks import CAMERAS, CONTROL_MODES, MANISKILL_TASKS, list_maniskill_tasks


def test_task_table_lists_the_issue_tasks_with_instructions():
    for name in ("PickCube", "PushCube", "StackCube", "PegInsertionSide"):
        assert name in list_maniskill_tasks()
        assert MANISKILL_TASKS[name].instructions
    assert sims.list_tasks("maniskill") == list_maniskill_tasks()
    assert set(CONTROL_MODES) == {"ee_delta", "joint_delta"}


def test_task_ids_exist_in_maniskill_and_need_no_download():
    pytest.importorskip("mani_skill", reason="the 'maniskill' extra is not installed")
    import mani_skill.envs  # noqa: F401
    from mani_skill.utils.registration import REGISTERED_ENVS

    for spec in MANISKILL_TASKS.values():
        assert spec.env_id in REGISTERED_ENVS, spec.env_id
        assert not REGISTERED_ENVS[spec.env_id].asset_download_ids, spec.env_id


def fake_raw_obs(n=3, with_camera=True):
    raw = {
        "agent": {"qpos": torch.randn(n, 9), "qvel": torch.randn(n, 9)},
        "extra": {
            "tcp_pose": torch.randn(n, 7),
            "goal_pos": torch.randn(n, 3),
            "obj_pose": torch.randn(n, 7),
            "is_grasped": torch.ones(n, dtype=torch.bool),
        },
    }
    if with_camera:
        raw["sensor_data"] = {
            "base_camera": {
                "rgb": torch.randint(0, 255, (n, 64, 64, 3), dtype=torch.uint8),
                "depth": torch.full((n, 64, 64, 1), 1500, dtype=torch.int16),
            }
        }
    return raw


def test_convert_obs_uses_our_feature_names():
    raw = fake_raw_obs()
    obs = convert_obs(raw, {"front": CAMERAS["front"]}, ["pick up the cube"] * 3)
    state = obs["observation.state"]
    assert state.shape == (3, 25) and state.dtype == torch.float32
    assert torch.equal(state[:, :9], raw["agent"]["qpos"]) and torch.equal(
        state[:, 18:], raw["extra"]["tcp_pose"]
    )
    env_state = obs["observation.environment_state"]
    assert env_state.shape == (3, 3 + 7 + 1)
    assert torch.equal(env_state[:, :3], raw["extra"]["goal_pos"]) and (env_state[:, -1] == 1).all()
    assert (
        obs["observation.images.front"].shape == (3, 64, 64, 3)
        and obs["observation.images.front"].dtype == torch.uint8
    )
    torch.testing.assert_close(obs["observation.depth.front"], torch.full((3, 64, 64), 1.5))
    assert obs["task"] == ["pick up the cube"] * 3
    assert "sensor_data" in raw and "tcp_pose" in raw["extra"]  # the input is not modified


def test_convert_obs_names_a_missing_camera():
    with pytest.raises(KeyError, match="hand_camera"):
        convert_obs(fake_raw_obs(), {"wrist": CAMERAS["wrist"]}, ["x"] * 3)


def test_state_flattening_round_trips():
    nested = {
        "actors": {"cube": torch.randn(2, 13), "goal": torch.randn(2, 13)},
        "articulations": {"panda": torch.randn(2, 31)},
    }
    flat = flatten_state(nested)
    assert set(flat) == {"sim.actors.cube", "sim.actors.goal", "sim.articulations.panda"}
    back = unflatten_state({**flat, "elapsed_steps": torch.zeros(2)})
    assert back.keys() == nested.keys() and torch.equal(
        back["actors"]["cube"], nested["actors"]["cube"]
    )
    with pytest.raises(ValueError, match="separator"):
        flatten_state({"a.b": torch.zeros(1)})


def test_make_checks_names_before_touching_sapien():
    with pytest.raises(ValueError, match="PickCube"):
        sims.make("PickCub", backend="maniskill")
    with pytest.raises(ValueError, match="PegInsertionSide"):
        sims.make("PegInsertionSid", backend="maniskill")
    with pytest.raises(ValueError, match="ManiSkill camera"):
        sims.make("PickCube", backend="maniskill", obs_mode="rgb", cameras=("side",))
    assert issubclass(ManiSkillBatchedEnv, sims.BatchedEnv)


@pytest.fixture(scope="module")
def pick_cube():
    pytest.importorskip("mani_skill", reason="the 'maniskill' extra is not installed")
    # ManiSkill's CPU simulation runs one env per process; the GPU one batches.
    device, num_envs = ("cuda", 4) if torch.cuda.is_available() else ("cpu", 1)
    try:
        env = sims.make(
            "PickCube",
            backend="maniskill",
            num_envs=num_envs,
            obs_mode="rgb",
            cameras=("front",),
            device=device,
        )
    except ManiSkillUnavailable as error:
        pytest.skip(
            f"SAPIEN has no usable device on this machine (ManiSkill needs a Vulkan GPU): {error}"
        )
    yield env
    env.close()


def test_maniskill_env_follows_the_contract(pick_cube):
    env = pick_cube
    n = env.num_envs
    obs = env.reset(seed=0)
    assert obs["observation.images.front"].shape == (n, 64, 64, 3)
    assert len(obs["task"]) == n and all(t in env.instructions for t in obs["task"])
    snapshot = env.get_state()
    actions = torch.rand(n, env.action_dim, device=env.device) * 2 - 1
    first = env.step(actions)[0]
    env.set_state(snapshot)
    again = env.step(actions)[0]
    torch.testing.assert_close(
        first["observation.state"], again["observation.state"], atol=1e-4, rtol=0
    )
    obs, reward, terminated, truncated, info = env.step(actions)
    assert reward.shape == (n,) and info["success"].dtype == torch.bool
    after = env.reset(env_ids=torch.tensor([n - 1]))
    assert env.base.elapsed_steps[n - 1] == 0 and (n == 1 or env.base.elapsed_steps[0] > 0)
    assert after["observation.state"].shape == (n, 25)


def test_rng_state_round_trips_maniskill_seeding():
    """get/set_rng_state over ManiSkill's seeding fields (a stand-in for its BaseEnv: the real
    one needs a Vulkan device): the draws after a restore repeat the draws after the save."""
    pytest.importorskip("mani_skill", reason="the 'maniskill' extra is not installed")
    import types

    import numpy as np
    from mani_skill.envs.utils.randomization.batched_rng import BatchedRNG

    env = object.__new__(ManiSkillBatchedEnv)
    episode = BatchedRNG.from_seeds([5, 6, 7])
    env.base = types.SimpleNamespace(
        _main_seed=[1, 2, 3], _main_rng=np.random.RandomState(1),
        _batched_main_rng=BatchedRNG.from_seeds([1, 2, 3]), _episode_seed=np.array([5, 6, 7]),
        _episode_rng=episode[0], _batched_episode_rng=episode,
    )
    env.device, env._generator = torch.device("cpu"), torch.Generator().manual_seed(3)

    def draws():
        base = env.base
        return (base._main_rng.randint(1000), base._batched_main_rng.randint(1000).tolist(),
                base._batched_episode_rng.rand().tolist(), base._episode_rng.rand(),
                torch.randint(1000, (4,), generator=env._generator).tolist())

    saved = env.get_rng_state()
    first = draws()
    env.base._episode_seed[0] = 99  # a reset rewriting the seeds in place
    env.set_rng_state(saved)
    assert draws() == first
    assert env.base._episode_rng is env.base._batched_episode_rng[0]
    assert env.base._episode_seed.tolist() == [5, 6, 7]


def test_maniskill_resumes_its_auto_resets(pick_cube):
    env = pick_cube
    ids = torch.arange(env.num_envs)
    env.reset(seed=1)
    state, rng, torch_rng = env.get_state(), env.get_rng_state(), torch.get_rng_state()
    first = env.reset(env_ids=ids)["observation.state"]  # the draws an auto-reset makes
    env.set_state(state)
    env.set_rng_state(rng)
    torch.set_rng_state(torch_rng)
    again = env.reset(env_ids=ids)["observation.state"]
    torch.testing.assert_close(first, again)
