"""PushCube and StackCube: spawn distributions, success, dense rewards, per-env resets."""

import pytest
import torch

import sims
from sims.tasks import push_cube, stack_cube

UPRIGHT = torch.tensor([1.0, 0.0, 0.0, 0.0])


def place(env, joint: str, pos: torch.Tensor) -> None:
    """Put a free body of every env at rest at (N, 3) `pos`, upright, and recompute the kinematics."""
    ids = torch.arange(env.num_envs)
    env.set_free_pose(joint, ids, pos, UPRIGHT.expand(env.num_envs, 4))
    env._forward(ids.numpy())


def assert_reset_of_env_1_only(env) -> None:
    env.reset(seed=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        env.step(torch.rand(env.num_envs, env.action_dim, generator=gen) * 2 - 1)
    before = env.task.environment_state().clone()
    after = env.reset(env_ids=torch.tensor([1]))["observation.environment_state"]
    assert torch.equal(after[[0, 2, 3]], before[[0, 2, 3]])
    assert not torch.equal(after[1], before[1])


# ---------------------------------------------------------------------------------- PushCube
@pytest.fixture(scope="module")
def push_env():
    env = sims.make("PushCube", num_envs=4, seed=0, terminate_on_success=False)
    yield env
    env.close()


def test_push_goal_within_bounds_and_at_the_required_distance():
    env = sims.make("PushCube", num_envs=64)
    low, high = push_cube.GOAL_DISTANCE
    for seed in range(3):
        env.reset(seed=seed)
        cube, goal = env.task.cube_pos(), env.task.goal
        distance = (goal - cube)[:, :2].norm(dim=1)
        assert ((distance >= low - 1e-4) & (distance <= high + 1e-4)).all()
        assert (goal[:, :2].abs() <= push_cube.GOAL_BOUND + 1e-5).all()
        assert (cube[:, :2].abs() <= push_cube.CUBE_SPAWN + 1e-5).all()
        assert torch.allclose(cube[:, 2], torch.full((64,), push_cube.HALF), atol=1e-4)
        marker = torch.as_tensor(env.mocap_pos[:, env.task.goal_mocap, :2], dtype=torch.float32)
        assert torch.allclose(marker, goal[:, :2])
        assert not env.task.success().any()
    env.close()


def test_push_observations_and_reward(push_env):
    obs = push_env.reset(seed=0)
    assert obs["observation.environment_state"].shape == (4, 16)
    assert len(push_env.instructions) >= 4
    reward = push_env.task.dense_reward()
    assert ((reward >= 0) & (reward <= 1)).all()


def test_push_reward_rises_as_the_cube_nears_the_goal(push_env):
    push_env.reset(seed=1)
    task = push_env.task
    start, goal = task.cube_pos().clone(), task.goal.clone()
    goal[:, 2] = push_cube.HALF
    rewards = []
    for fraction in (0.0, 0.5, 1.0):
        place(push_env, "cube_joint", start + fraction * (goal - start))
        rewards.append(task.dense_reward())
        assert torch.equal(task.success(), torch.full((push_env.num_envs,), fraction == 1.0))
    assert (rewards[1] > rewards[0]).all() and (rewards[2] > rewards[1]).all()
    # the last centimetres still pay: 4 cm -> 1 cm from the goal is worth a clear step in reward
    direction = (goal - start) / (goal - start).norm(dim=1, keepdim=True)
    near = []
    for distance in (0.04, 0.01):
        place(push_env, "cube_joint", goal - distance * direction)
        near.append(task.dense_reward())
    assert (near[1] - near[0] > 0.12).all(), near
    place(push_env, "cube_joint", goal + torch.tensor([0.0, 0.0, 0.05]))  # lifted over the goal
    assert not task.success().any()


def test_push_reset_of_one_env_leaves_the_others_untouched(push_env):
    assert_reset_of_env_1_only(push_env)


def test_push_goal_is_part_of_the_state(push_env):
    push_env.reset(seed=4)
    snapshot = push_env.get_state()
    goal = push_env.task.goal.clone()
    push_env.reset(seed=5)
    assert not torch.equal(push_env.task.goal, goal)
    push_env.set_state(snapshot)
    assert torch.equal(push_env.task.goal, goal)
    marker = torch.as_tensor(push_env.mocap_pos[:, push_env.task.goal_mocap, :2], dtype=torch.float32)
    assert torch.allclose(marker, goal[:, :2])


# --------------------------------------------------------------------------------- StackCube
@pytest.fixture(scope="module")
def stack_env():
    env = sims.make("StackCube", num_envs=4, seed=0, terminate_on_success=False)
    yield env
    env.close()


def test_stack_spawn_keeps_the_cubes_apart():
    env = sims.make("StackCube", num_envs=64)
    for seed in range(3):
        env.reset(seed=seed)
        a, b = env.task.pos_a(), env.task.pos_b()
        assert ((a - b)[:, :2].norm(dim=1) >= stack_cube.MIN_DISTANCE - 1e-5).all()
        for pos in (a, b):
            assert (pos[:, :2].abs() <= stack_cube.SPAWN + 1e-5).all()
            assert torch.allclose(pos[:, 2], torch.full((64,), stack_cube.HALF), atol=1e-4)
        assert not env.task.success().any()
    env.close()


def test_stack_observations_and_reward(stack_env):
    obs = stack_env.reset(seed=0)
    assert obs["observation.environment_state"].shape == (4, 20)
    assert len(stack_env.instructions) >= 4
    reward = stack_env.task.dense_reward()
    assert ((reward >= 0) & (reward <= 1)).all()


def test_stack_success_and_reward_when_a_rests_on_b(stack_env):
    stack_env.reset(seed=1)
    task = stack_env.task
    before = task.dense_reward()
    on_b = task.pos_b() + torch.tensor([0.0, 0.0, 2 * stack_cube.HALF])
    place(stack_env, "cube_a_joint", on_b)
    assert task.success().all()  # the gripper is far away at its rest pose
    assert (task.dense_reward() > before).all()
    hold = torch.zeros(stack_env.num_envs, stack_env.action_dim)
    for _ in range(5):  # A stays on B under gravity
        stack_env.step(hold)
    assert task.on_top().all()
    place(stack_env, "cube_a_joint", on_b + torch.tensor([0.03, 0.0, 0.0]))  # off centre
    assert not task.success().any()
    place(stack_env, "cube_a_joint", on_b)
    stack_env.qvel[:, task.dof_a] = 0.2  # sliding: not at rest
    assert not task.success().any()


def test_stack_reset_of_one_env_leaves_the_others_untouched(stack_env):
    assert_reset_of_env_1_only(stack_env)


# ---------------------------------------------------------------------------------- stages
class _Scripted:
    """The run_episodes side of a Policy: the task's scripted expert, or no motion at all."""

    def __init__(self, env, still: bool = False):
        self.expert, self.still, self.action_dim = env.task.expert(), still, env.action_dim

    def act(self, obs, deterministic=False):
        from policies.base import PolicyOutput

        action = self.expert.act(obs)
        if self.still:
            action = torch.zeros_like(action)
        return PolicyOutput(action=action[:, None], log_prob=torch.zeros(len(action)))


@pytest.mark.parametrize("task", ["StackCube", "PlaceInBin"])
def test_stages_are_reached_in_order_by_the_expert_and_not_by_standing_still(task):
    from embodied.evaluate import run_episodes

    n = 12
    env = sims.make(task, num_envs=2, seed=5)  # training envs leave the milestones out
    env.reset(seed=5)
    assert "stages" not in env.step(torch.zeros(2, env.action_dim))[4]
    env.close()
    for still in (False, True):
        env = sims.make(task, num_envs=n, seed=5, report_stages=True)
        obs = env.reset(seed=5)
        assert not any(stage.any() for stage in env.task.stages().values())  # nothing at the start
        success, _, stages, _ = run_episodes(_Scripted(env, still), env, obs, n, True, None, 0)
        env.close()
        names = list(stages)
        assert names == list(env.task.stages()) and names[0] == "lifted"
        if still:
            assert not success.any() and not any(r.any() for r in stages.values())
            continue
        assert success.float().mean() >= 0.9
        for reached in stages.values():
            assert (reached | ~success).all()  # every success went through every milestone
        for earlier, later in zip(names[:-1], names[1:], strict=True):
            assert (stages[earlier] | ~stages[later]).all()  # a later milestone implies the earlier
