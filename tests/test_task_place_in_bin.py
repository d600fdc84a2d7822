"""PlaceInBin: spawn distribution, success, cube-bin contacts, per-env resets."""

import pytest
import torch

import sims
from sims.tasks.place_in_bin import (
    CUBE_HIGH,
    CUBE_LOW,
    FLOOR_HALF_THICKNESS,
    HALF,
    INNER,
    MIN_DISTANCE,
    WALL_HALF_THICKNESS,
    WALL_HEIGHT,
)

UPRIGHT = torch.tensor([1.0, 0.0, 0.0, 0.0])
FAR_BIN = (0.1, 0.15)  # a bin pose well away from the robot's rest TCP at (0, 0, 0.17)


@pytest.fixture(scope="module")
def env():
    env = sims.make("PlaceInBin", num_envs=4, seed=0, terminate_on_success=False)
    yield env
    env.close()


def place_bin(env, xy=FAR_BIN) -> None:
    """Move every env's bin to `xy`, unrotated, and recompute the kinematics."""
    env.mocap_pos[:, env.task.bin_mocap] = (*xy, 0.0)
    env.mocap_quat[:, env.task.bin_mocap] = UPRIGHT.double().numpy()
    env._forward(torch.arange(env.num_envs).numpy())


def place_cube(env, offset: tuple[float, float, float]) -> None:
    """Put every env's cube at rest at bin centre + `offset` and recompute the kinematics."""
    ids = torch.arange(env.num_envs)
    pos = env.task.bin_pos() + torch.tensor(offset)
    env.set_free_pose("cube_joint", ids, pos, UPRIGHT.expand(env.num_envs, 4))
    env._forward(ids.numpy())


def test_spawn_keeps_cube_and_bin_apart_in_the_workspace():
    env = sims.make("PlaceInBin", num_envs=64)
    for seed in range(3):
        env.reset(seed=seed)
        cube, bin_pos = env.task.cube_pos(), env.task.bin_pos()
        assert ((cube - bin_pos)[:, :2].norm(dim=1) >= MIN_DISTANCE - 1e-5).all()
        assert (cube[:, :2] >= torch.tensor(CUBE_LOW) - 1e-5).all()
        assert (cube[:, :2] <= torch.tensor(CUBE_HIGH) + 1e-5).all()
        assert (bin_pos[:, :2].abs() <= 0.2).all()
        assert torch.allclose(cube[:, 2], torch.full((64,), HALF), atol=1e-4)
        assert not env.task.success().any()
    env.close()


def test_observations_and_reward(env):
    obs = env.reset(seed=0)
    assert obs["observation.environment_state"].shape == (4, 20)
    assert len(env.instructions) >= 4
    reward = env.task.dense_reward()
    assert ((reward >= 0) & (reward <= 1)).all()


def test_success_needs_the_cube_inside_the_bin(env):
    env.reset(seed=1)
    place_bin(env)
    place_cube(env, (0.02, -0.03, 2 * FLOOR_HALF_THICKNESS + HALF))
    assert env.task.success().all()  # the gripper is far away at its rest pose
    place_cube(env, (INNER + 0.04, 0.0, HALF))
    assert not env.task.success().any()
    place_cube(env, (0.0, 0.0, WALL_HEIGHT + HALF + 0.01))  # above the bin, not in it
    assert not env.task.success().any()


def test_cube_collides_with_the_bin(env):
    env.reset(seed=2)
    place_bin(env)
    wall_x = INNER + WALL_HALF_THICKNESS
    place_cube(env, (wall_x, 0.0, WALL_HEIGHT + HALF + 0.01))  # dropped onto the +x wall's top
    zero = torch.zeros(env.num_envs, env.action_dim)
    for _ in range(5):
        env.step(zero)
        assert (env.task.cube_pos()[:, 2] > WALL_HEIGHT + HALF - 0.005).all(), "the cube fell through a wall"
    env.reset(seed=2)
    place_bin(env)
    place_cube(env, (0.0, 0.0, HALF + 0.02))  # dropped into the bin: it lands on the floor
    for _ in range(5):
        env.step(zero)
    assert torch.allclose(env.task.cube_pos()[:, 2], torch.full((4,), 2 * FLOOR_HALF_THICKNESS + HALF), atol=1e-3)


def test_reset_of_one_env_leaves_the_others_untouched(env):
    env.reset(seed=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        env.step(torch.rand(env.num_envs, env.action_dim, generator=gen) * 2 - 1)
    before = env.task.environment_state().clone()
    after = env.reset(env_ids=torch.tensor([1]))["observation.environment_state"]
    assert torch.equal(after[[0, 2, 3]], before[[0, 2, 3]])
    assert not torch.equal(after[1], before[1])


def test_bin_pose_is_part_of_the_state(env):
    env.reset(seed=4)
    snapshot = env.get_state()
    bin_pos = env.task.bin_pos().clone()
    env.reset(seed=5)
    assert not torch.equal(env.task.bin_pos(), bin_pos)
    env.set_state(snapshot)
    assert torch.equal(env.task.bin_pos(), bin_pos)
