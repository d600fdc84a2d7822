"""The BatchedEnv contract on the MuJoCo CPU backend."""

import numpy as np
import pytest
import torch

import sims


@pytest.fixture(scope="module")
def env():
    env = sims.make("PickCube", num_envs=4, seed=0)
    yield env
    env.close()


def random_actions(env, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(env.num_envs, env.action_dim, generator=generator) * 2 - 1


def tensor_obs(obs):
    return {k: v for k, v in obs.items() if isinstance(v, torch.Tensor)}


def assert_obs_equal(a, b):
    assert a.keys() == b.keys()
    for key in tensor_obs(a):
        assert torch.equal(a[key], b[key]), key
    assert a["task"] == b["task"]


def test_step_returns_batched_tensors(env):
    obs = env.reset(seed=0)
    assert obs["observation.state"].shape == (4, 25) and obs["observation.state"].dtype == torch.float32
    assert obs["observation.environment_state"].shape[0] == 4
    assert len(obs["task"]) == 4 and all(t in env.instructions for t in obs["task"])
    obs, reward, terminated, truncated, info = env.step(torch.zeros(4, env.action_dim))
    assert reward.shape == (4,) and reward.dtype == torch.float32
    assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
    assert info["success"].shape == (4,) and info["success"].dtype == torch.bool


def test_set_state_round_trips_exactly(env):
    gen = torch.Generator().manual_seed(0)
    env.reset(seed=3)
    for _ in range(5):
        env.step(random_actions(env, gen))
    snapshot = env.get_state()
    actions = [random_actions(env, gen) for _ in range(8)]
    first = [env.step(a)[0] for a in actions]
    restored = env.set_state(snapshot)
    second = [env.step(a)[0] for a in actions]
    for a, b in zip(first, second, strict=True):
        assert_obs_equal(a, b)
    assert restored["observation.state"].shape == (4, 25)


def test_set_state_copies_one_env_to_a_group(env):
    """GRPO groups: every env of a group starts from env 0's state and, with equal actions,
    follows the same trajectory bit for bit."""
    env.reset(seed=4)
    env.step(random_actions(env, torch.Generator().manual_seed(1)))
    snapshot = env.get_state()
    row0 = {k: v[[0, 0, 0]] for k, v in snapshot.items()}
    env.set_state(row0, env_ids=torch.tensor([1, 2, 3]))
    action = torch.rand(1, env.action_dim).expand(4, -1) * 2 - 1
    for _ in range(5):
        obs = env.step(action)[0]
    state = obs["observation.state"]
    assert torch.equal(state[0], state[1]) and torch.equal(state[0], state[3])


def test_reset_seed_is_per_env_and_independent_of_num_envs():
    small = sims.make("PickCube", num_envs=2)
    large = sims.make("PickCube", num_envs=5)
    a = small.reset(seed=11)["observation.environment_state"]
    b = large.reset(seed=11)["observation.environment_state"]
    assert torch.equal(a, b[:2])
    assert not torch.equal(b[0], b[1])
    c = large.reset(seed=12)["observation.environment_state"]
    assert not torch.equal(b, c)


def test_partial_reset_touches_only_given_envs(env):
    obs = env.reset(seed=0)
    env.step(random_actions(env, torch.Generator().manual_seed(2)))
    before = tensor_obs(env.step(torch.zeros(4, env.action_dim))[0])
    after = env.reset(env_ids=torch.tensor([1]))
    for key, value in before.items():
        assert torch.equal(after[key][[0, 2, 3]], value[[0, 2, 3]]), key
        assert not torch.equal(after[key][1], value[1]), key
    assert obs is not None


def test_truncation_and_auto_reset_keep_final_observation():
    env = sims.make("Reach", num_envs=3, max_episode_steps=3)
    env.reset(seed=0)
    action = torch.zeros(3, env.action_dim)
    action[:, 2] = 1.0  # move up, away from most goals
    for _ in range(2):
        _, _, terminated, truncated, info = env.step(action)
        assert not truncated.any() and "final_observation" not in info
    obs, _, terminated, truncated, info = env.step(action)
    done = terminated | truncated
    assert done.all() and torch.equal(info["done"], done)
    assert truncated[~terminated].all()
    final = info["final_observation"]["observation.state"]
    assert not torch.equal(final, obs["observation.state"])
    assert (env.elapsed_steps == 0).all()
    # the reset envs start at the rest pose again: TCP near (0, 0, 0.17)
    assert (obs["observation.state"][:, 18:21] - torch.tensor([0.0, 0.0, 0.17])).norm(dim=1).max() < 0.05


def test_bad_actions_raise_and_leave_env_usable(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(num_envs, action_dim\) = \(4, 7\)"):
        env.step(torch.zeros(4, 8))
    with pytest.raises(TypeError, match="floating point"):
        env.step(torch.zeros(4, 7, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        env.step(np.zeros((4, 7)))
    bad = torch.zeros(4, 7)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in envs \[2\]"):
        env.step(bad)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(bad)
    obs, *_ = env.step(torch.zeros(4, 7))
    assert torch.isfinite(obs["observation.state"]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "PickCub"}, "Unknown task 'PickCub'. Did you mean 'PickCube'"),
        ({"backend": "mujuco"}, "Unknown backend 'mujuco'.*Valid: mujoco"),
        ({"controller": "ee_pose"}, "Unknown controller 'ee_pose'.*ee_delta"),
        ({"obs_mode": "pixels"}, "Unknown obs_mode 'pixels'.*rgb"),
        ({"obs_mode": "rgb", "cameras": ("frnt",)}, "Unknown camera 'frnt'. Did you mean 'front'"),
        ({"num_env": 3}, "Unknown EnvConfig field 'num_env'. Did you mean 'num_envs'"),
        ({"num_envs": 0}, "num_envs must be >= 1"),
    ],
)
def test_bad_names_raise_with_valid_choices(kwargs, message):
    kwargs = {"task": "Reach", "num_envs": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        sims.make(kwargs.pop("task"), **kwargs)


def test_unstable_physics_ends_only_that_episode(env):
    env.reset(seed=0)
    cube_dof = env.model.joint("cube_joint").dofadr[0]
    env.qvel[1, cube_dof : cube_dof + 3] = 1e30
    obs, reward, terminated, truncated, info = env.step(torch.zeros(4, 7))
    assert info["unstable"].tolist() == [False, True, False, False]
    assert terminated[1] and not terminated[[0, 2, 3]].any()
    assert reward[1] == 0 and not info["success"][1]
    assert torch.isfinite(obs["observation.state"]).all()
    assert torch.isfinite(obs["observation.environment_state"]).all()
    obs, *_ = env.step(torch.zeros(4, 7))
    assert not env.step(torch.zeros(4, 7))[4]["unstable"].any()


def test_ee_delta_moves_the_tcp_by_the_documented_scale():
    env = sims.make("Reach", num_envs=3)
    env.reset(seed=0)
    start = env.tcp_pos.clone()
    action = torch.zeros(3, 7)
    action[0, 1] = 1.0  # +y
    action[1, 0] = -1.0  # -x
    action[2, 2] = -0.5  # -z
    for _ in range(8):
        env.step(action)
    moved = env.tcp_pos - start
    # 8 steps of 3 cm (1.5 cm for env 2); the servos take a step or two to catch up
    assert 0.17 < moved[0, 1] < 0.25 and moved[0, [0, 2]].abs().max() < 0.03
    assert -0.25 < moved[1, 0] < -0.13 and moved[1, 1:].abs().max() < 0.04
    assert -0.13 < moved[2, 2] < -0.08 and moved[2, :2].abs().max() < 0.02


def test_joint_delta_controller_moves_each_joint():
    env = sims.make("Reach", num_envs=1, controller="joint_delta")
    obs = env.reset(seed=0)
    q0 = obs["observation.state"][0, :7].clone()
    action = torch.zeros(1, 8)
    action[0, 0] = 1.0
    action[0, 6] = -1.0
    for _ in range(3):
        obs, *_ = env.step(action)
    dq = obs["observation.state"][0, :7] - q0
    assert dq[0] > 0.15 and dq[6] < -0.15 and dq[1:6].abs().max() < 0.05


def test_gripper_opens_and_closes():
    env = sims.make("Reach", num_envs=1)
    env.reset(seed=0)
    close = torch.zeros(1, 7)
    close[0, 6] = -1
    for _ in range(10):
        env.step(close)
    assert env.gripper_width[0] < 0.005
    for _ in range(10):
        env.step(-close)
    assert env.gripper_width[0] > 0.075


def test_control_rate_sets_substeps():
    assert sims.make("Reach", num_envs=1, control_hz=10).substeps == 20
    assert sims.make("Reach", num_envs=1).substeps == 10


def test_domain_randomization_differs_between_envs_and_is_off_by_default():
    plain = sims.make("PickCube", num_envs=3)
    assert plain.batch.expanded("geom_rgba") is None
    dr = sims.make("PickCube", num_envs=3, randomization=sims.RandomizationConfig(enabled=True))
    cube = dr.model.geom("cube").id
    rgba = dr.batch.expanded("geom_rgba")[:, cube]
    assert not np.allclose(rgba[0], rgba[1])
    friction = dr.batch.expanded("geom_friction")[:, cube, 0]
    assert friction.std() > 0 and (friction >= 0.7 - 1e-9).all() and (friction <= 1.3 + 1e-9).all()
    mass = dr.batch.expanded("body_mass")[:, dr.model.body("cube").id]
    assert mass.std() > 0
    assert dr.batch.expanded("cam_pos") is not None and dr.batch.expanded("light_diffuse") is not None
    # a snapshot carries the randomized model values, so set_state restores them too
    state = dr.get_state()
    dr.reset(seed=99)
    dr.set_state(state)
    assert np.array_equal(dr.batch.expanded("geom_rgba")[:, cube], rgba)


def test_sparse_reward_is_success():
    env = sims.make("Reach", num_envs=8, reward_mode="sparse")
    obs = env.reset(seed=0)
    expert = env.task.expert()
    for _ in range(30):
        obs, reward, _, _, info = env.step(expert.act(obs))
        assert torch.equal(reward, info["success"].float())


def test_camera_observations_follow_each_env_state():
    env = sims.make("PickCube", num_envs=3, obs_mode="rgbd", cameras=("front", "wrist"),
                    render=sims.RenderSettings(width=48, height=40))
    obs = env.reset(seed=0)
    front, wrist = obs["observation.images.front"], obs["observation.images.wrist"]
    assert front.shape == (3, 40, 48, 3) and front.dtype == torch.uint8 and wrist.shape == (3, 40, 48, 3)
    depth = obs["observation.depth.front"]
    assert depth.shape == (3, 40, 48) and depth.dtype == torch.float32
    table = depth[:, 20:]  # the lower half sees the table (the upper half partly the far plane)
    assert table.min() > 0.2 and table.max() < 3.0, (table.min(), table.max())
    assert not torch.equal(front[0], front[1])  # the cubes lie elsewhere
    snapshot = env.get_state()
    obs = env.set_state({k: v[[0]] for k, v in snapshot.items()}, env_ids=torch.tensor([1]))
    assert torch.equal(obs["observation.images.front"][0], obs["observation.images.front"][1])
    assert torch.equal(obs["observation.images.wrist"][0], obs["observation.images.wrist"][1])
    env.close()


def test_ee_jacobian_from_step_kinematics_equals_mj_jac():
    env = sims.make("PickCube", num_envs=3)
    env.reset(seed=0)
    for _ in range(3):
        env.step(torch.rand(3, 7) * 2 - 1)
        jacp, jacr = env.batch.jac(env.hand_body_id, env.tcp_pos_np)
        expected = np.concatenate((jacp[:, :, :7], jacr[:, :, :7]), axis=1)
        np.testing.assert_allclose(env.controller.jacobian(), expected, atol=1e-12)
