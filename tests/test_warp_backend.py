"""The MuJoCo Warp backend on the CPU device: the BatchedEnv contract, every task, and agreement
with the MuJoCo CPU backend for the same states and actions.

Warp compiles its kernels on first use (~50 s on 2 cores for the first model, a few seconds
for each further task) and caches them under ~/.cache/warp, so later runs start in seconds.
"""

import numpy as np
import pytest
import torch

import sims

pytest.importorskip(
    "mujoco_warp", reason="the 'warp' extra (mujoco-warp, warp-lang) is not installed"
)

NUM_ENVS = 2
STEPS = 6
# float32 (Warp) against float64 (CPU) physics, and two implementations of the contact solver:
# over a few 50 ms control steps of random actions the two agree to ~1e-5 on joint states and
# free-moving objects; cubes settling onto the table in the first step differ by up to ~0.3 mm
# and ~0.003 in a quaternion component (StackCube, measured). 5e-3 bounds both.
ATOL = 5e-3


def random_actions(env, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(env.num_envs, env.action_dim, generator=generator) * 2 - 1


def assert_obs_close(cpu_obs, warp_obs, atol=ATOL):
    for key in ("observation.state", "observation.environment_state"):
        assert warp_obs[key].dtype == torch.float32, key
        torch.testing.assert_close(warp_obs[key], cpu_obs[key], atol=atol, rtol=0, msg=key)
    assert warp_obs["task"] == cpu_obs["task"]


@pytest.mark.parametrize("task", sims.list_tasks())
def test_task_steps_and_matches_cpu_backend(task):
    cpu = sims.make(task, num_envs=NUM_ENVS, num_threads=1, seed=3)
    warp = sims.make(task, num_envs=NUM_ENVS, backend="mujoco_warp", seed=3)
    assert warp.action_dim == cpu.action_dim and warp.max_episode_steps == cpu.max_episode_steps
    cpu_obs = cpu.reset(seed=5)
    # The same seed samples the same initial states on both backends ...
    assert_obs_close(cpu_obs, warp.reset(seed=5))
    # ... and a CPU snapshot restores on Warp (one integration-state layout).
    assert_obs_close(cpu_obs, warp.set_state(cpu.get_state()))
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        action = random_actions(cpu, generator)
        cpu_obs, cpu_reward, cpu_term, cpu_trunc, cpu_info = cpu.step(action)
        warp_obs, warp_reward, warp_term, warp_trunc, warp_info = warp.step(action)
        assert_obs_close(cpu_obs, warp_obs)
        torch.testing.assert_close(warp_reward, cpu_reward, atol=ATOL, rtol=0)
        assert torch.equal(warp_info["success"], cpu_info["success"])
        assert torch.equal(warp_term, cpu_term) and torch.equal(warp_trunc, cpu_trunc)
        assert not warp_info["unstable"].any()
    cpu.close()
    warp.close()


@pytest.fixture(scope="module")
def reach():
    env = sims.make("Reach", num_envs=3, backend="mujoco_warp", seed=0, max_episode_steps=4)
    yield env
    env.close()


def test_get_state_set_state_is_exact(reach):
    reach.reset(seed=1)
    generator = torch.Generator().manual_seed(1)
    reach.step(random_actions(reach, generator))
    snapshot = reach.get_state()
    assert snapshot["physics"].shape[0] == 3 and snapshot["task.goal"].shape == (3, 3)
    actions = [random_actions(reach, generator) for _ in range(2)]
    first = [reach.step(a)[0] for a in actions]
    restored = reach.set_state(snapshot)
    assert torch.equal(restored["observation.state"], reach._observe()["observation.state"])
    again = [reach.step(a)[0] for a in actions]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["observation.state"], b["observation.state"])
        assert torch.equal(a["observation.environment_state"], b["observation.environment_state"])


def test_set_state_rows_go_to_env_ids(reach):
    reach.reset(seed=2)
    snapshot = reach.get_state()
    reach.reset(seed=3)
    before = reach._observe()
    rows = {k: v[[0]] for k, v in snapshot.items()}
    obs = reach.set_state(rows, env_ids=torch.tensor([2]))
    assert torch.equal(obs["observation.environment_state"][2, :3], snapshot["task.goal"][0])
    assert torch.equal(obs["observation.state"][:2], before["observation.state"][:2])


def test_reset_env_ids_leaves_the_others(reach):
    reach.reset(seed=4)
    generator = torch.Generator().manual_seed(4)
    obs = reach.step(random_actions(reach, generator))[0]
    after = reach.reset(env_ids=torch.tensor([1]))
    assert torch.equal(after["observation.state"][[0, 2]], obs["observation.state"][[0, 2]])
    assert not torch.equal(after["observation.state"][1], obs["observation.state"][1])
    assert reach.elapsed_steps[1] == 0 and reach.elapsed_steps[0] == 1


def test_truncation_auto_resets_with_final_observation(reach):
    reach.reset(seed=5)
    zeros = torch.zeros(3, reach.action_dim)
    for _ in range(3):
        _, _, _, truncated, info = reach.step(zeros)
        assert not truncated.any()
    obs, _, terminated, truncated, info = reach.step(zeros)
    assert truncated.all() and not terminated.any()
    assert "final_observation" in info and info["done"].all()
    assert (reach.elapsed_steps == 0).all()
    assert not torch.equal(info["final_observation"]["observation.state"], obs["observation.state"])


def test_numpy_views_alias_the_simulation(reach):
    """On the CPU device the env's NumPy views are the Warp arrays' memory: tasks write mocap
    goals and the controller writes ctrl straight into the simulation."""
    qpos = reach.batch.bind("qpos")
    assert qpos.dtype == np.float32
    torch_qpos = reach.batch.torch("qpos")
    assert torch_qpos.data_ptr() == qpos.__array_interface__["data"][0]


def test_rgb_observations_match_cpu_backend():
    cpu = sims.make(
        "PickCube", num_envs=2, num_threads=1, obs_mode="rgb", cameras=("front",), seed=0
    )
    warp = sims.make(
        "PickCube", num_envs=2, backend="mujoco_warp", obs_mode="rgb", cameras=("front",), seed=0
    )
    cpu_obs = cpu.reset(seed=0)
    warp_obs = warp.set_state(cpu.get_state())
    image = warp_obs["observation.images.front"]
    assert image.shape == (2, 64, 64, 3) and image.dtype == torch.uint8
    # float32 poses move a few edge pixels at most
    differing = (image.int() - cpu_obs["observation.images.front"].int()).abs().amax(-1) > 8
    assert differing.float().mean() < 0.01
    cpu.close()
    warp.close()


def test_randomization_is_refused_with_a_message():
    with pytest.raises(ValueError, match="domain randomization"):
        sims.make(
            "Reach",
            num_envs=1,
            backend="mujoco_warp",
            randomization=sims.RandomizationConfig(enabled=True),
        )


@pytest.mark.slow
def test_expert_grasp_agrees_across_backends():
    """PickCube's scripted expert on the CPU backend; its actions replayed on Warp: the contact-
    rich grasp and lift succeed on both and the cube paths stay within 1 cm."""
    cpu = sims.make("PickCube", num_envs=2, num_threads=1, seed=0)
    warp = sims.make("PickCube", num_envs=2, backend="mujoco_warp", seed=0)
    warp.set_state(cpu.get_state())
    expert = cpu.task.expert()
    cpu_success = torch.zeros(2, dtype=torch.bool)
    warp_success = torch.zeros(2, dtype=torch.bool)
    for _ in range(cpu.max_episode_steps):
        action = expert.act()
        cpu_obs, _, _, _, cpu_info = cpu.step(action)
        warp_obs, _, _, _, warp_info = warp.step(action)
        cpu_success |= cpu_info["success"]
        warp_success |= warp_info["success"]
        if cpu_success.all():
            break
        cube = slice(0, 3)
        gap = (
            cpu_obs["observation.environment_state"][:, cube]
            - warp_obs["observation.environment_state"][:, cube]
        ).norm(dim=1)
        assert (gap < 0.01).all()
    assert cpu_success.all() and warp_success.all()
