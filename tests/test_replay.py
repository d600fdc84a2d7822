"""Replay buffer: n-step targets against a reference loop, ring wrap-around, demo/online
mixing, and a round trip through a LeRobot dataset."""

import pytest
import torch

from embodied.data.replay import ReplayBuffer, from_lerobot, sample_mixed, to_lerobot


def fill(buffer: ReplayBuffer, steps: int, seed: int = 0, episode_length: int = 5) -> list[dict]:
    """Random transitions with episodes of varying length per env; returns what was written."""
    g = torch.Generator().manual_seed(seed)
    n = buffer.num_envs
    written = []
    age = torch.zeros(n, dtype=torch.long)
    lengths = torch.randint(2, episode_length + 1, (n,), generator=g)
    for _ in range(steps):
        obs = {"observation.state": torch.randn(n, 3, generator=g)}
        next_obs = {"observation.state": torch.randn(n, 3, generator=g)}
        action = torch.randn(n, 2, generator=g)
        reward = torch.rand(n, generator=g)
        age += 1
        end = age >= lengths
        terminated = end & (torch.rand(n, generator=g) < 0.5)
        truncated = end & ~terminated
        intervention = torch.rand(n, generator=g) < 0.2
        buffer.add(obs, action, reward, terminated, truncated, next_obs, intervention)
        written.append({"obs": obs, "next_obs": next_obs, "action": action, "reward": reward,
                        "terminated": terminated, "done": terminated | truncated, "intervention": intervention})
        age[end] = 0
        lengths[end] = torch.randint(2, episode_length + 1, (int(end.sum()),), generator=g)
    return written


def reference_n_step(written: list[dict], t: int, env: int, n: int, gamma: float):
    """The n-step return by a plain loop over the written history (t is an absolute step)."""
    ret, discount, last = 0.0, 1.0, t
    for k in range(n):
        if t + k >= len(written):
            break
        step = written[t + k]
        ret += discount * float(step["reward"][env])
        discount *= gamma
        last = t + k
        if bool(step["done"][env]):
            break
    if bool(written[last]["terminated"][env]):
        discount = 0.0
    return ret, discount, written[last]["next_obs"]["observation.state"][env]


@pytest.mark.parametrize("n_step", [1, 3, 5])
def test_n_step_targets_match_a_reference_loop(n_step):
    gamma = 0.9
    buffer = ReplayBuffer(64, 4, {"observation.state": (3,)}, 2)
    written = fill(buffer, 40)
    t = torch.arange(40).repeat_interleave(4)
    env = torch.arange(4).repeat(40)
    batch = buffer.gather(t, env, n_step=n_step, gamma=gamma)
    for i in range(t.shape[0]):
        ret, discount, bootstrap = reference_n_step(written, int(t[i]), int(env[i]), n_step, gamma)
        assert batch["n_step_reward"][i].item() == pytest.approx(ret, abs=1e-5)
        assert batch["discount"][i].item() == pytest.approx(discount, abs=1e-6)
        assert torch.equal(batch["next_obs"]["observation.state"][i], bootstrap)
        assert torch.equal(batch["action"][i], written[int(t[i])]["action"][int(env[i])])


def test_ring_wraps_and_n_step_never_reads_past_the_newest_or_into_overwritten():
    gamma = 0.8
    buffer = ReplayBuffer(16, 2, {"observation.state": (3,)}, 2)
    written = fill(buffer, 37, seed=1)  # wrapped twice; slots hold steps 21..36
    assert buffer.full and len(buffer) == 32 and buffer.pos == 37 % 16
    for absolute in range(21, 37):
        slot = absolute % 16
        for env in range(2):
            batch = buffer.gather(torch.tensor([slot]), torch.tensor([env]), n_step=4, gamma=gamma)
            ret, discount, bootstrap = reference_n_step(written, absolute, env, 4, gamma)
            assert batch["n_step_reward"].item() == pytest.approx(ret, abs=1e-5)
            assert batch["discount"].item() == pytest.approx(discount, abs=1e-6)
            assert torch.equal(batch["next_obs"]["observation.state"][0], bootstrap)


def test_mixed_sampling_takes_the_configured_fraction_from_each_buffer():
    online = ReplayBuffer(32, 2, {"observation.state": (3,)}, 2)
    offline = ReplayBuffer(32, 1, {"observation.state": (3,)}, 2)
    fill(online, 20, seed=2)
    fill(offline, 30, seed=3)
    offline.action.fill_(7.0)  # marks the offline rows
    g = torch.Generator().manual_seed(0)
    for fraction, expected in ((0.5, 32), (0.25, 16), (0.0, 0)):
        batch = sample_mixed(online, offline, 64, fraction, n_step=3, gamma=0.9, generator=g)
        assert batch["action"].shape == (64, 2) and batch["from_offline"].sum().item() == expected
        assert (batch["action"][batch["from_offline"]] == 7.0).all()
        assert (batch["action"][~batch["from_offline"]] != 7.0).all()
    empty = ReplayBuffer(8, 2, {"observation.state": (3,)}, 2)
    assert sample_mixed(empty, offline, 10, 0.5, generator=g)["from_offline"].all()
    with pytest.raises(ValueError, match="empty"):
        sample_mixed(empty, None, 10)


def test_buffer_round_trips_through_a_lerobot_dataset(tmp_path):
    buffer = ReplayBuffer(64, 3, {"observation.state": (3,), "observation.environment_state": (2,)}, 2)
    g = torch.Generator().manual_seed(5)
    # three envs, episodes of fixed lengths 4, 5, 6, then a partial episode at the end of each column
    for step in range(20):
        obs = {"observation.state": torch.randn(3, 3, generator=g), "observation.environment_state": torch.randn(3, 2, generator=g)}
        done = torch.tensor([(step + 1) % 4 == 0, (step + 1) % 5 == 0, (step + 1) % 6 == 0]) & (step < 18)
        terminated = done & torch.tensor([True, False, True])
        next_obs = {k: v + 1 for k, v in obs.items()}
        buffer.add(obs, torch.randn(3, 2, generator=g), torch.rand(3, generator=g), terminated, done & ~terminated,
                   next_obs, torch.rand(3, generator=g) < 0.3)
    episodes = buffer.episodes()
    assert [e["action"].shape[0] for e in episodes] == [4] * 4 + [5] * 3 + [6] * 3
    written = to_lerobot(buffer, tmp_path / "replay", task="test the buffer")
    assert written == len(episodes)
    loaded = from_lerobot(tmp_path / "replay", obs_keys=("observation.state", "observation.environment_state"))
    flat = {k: torch.cat([e[k] for e in episodes]) for k in episodes[0]}
    assert len(loaded) == flat["action"].shape[0]
    for key in ("action", "reward", "terminated", "done", "intervention"):
        assert torch.equal(getattr(loaded, key)[:, 0], flat[key]), key
    for key in buffer.obs_shapes:
        assert torch.equal(loaded.obs[key][:, 0], flat[key])
        # inside an episode the next observation is the following frame
        inside = ~flat["done"]
        assert torch.equal(loaded.next_obs[key][:, 0][inside], torch.roll(flat[key], -1, 0)[inside])
    assert loaded.intervention.any() and loaded.terminated.any() and (loaded.done & ~loaded.terminated).any()
    assert loaded.task_names == ["test the buffer"] and not loaded.task.any()  # every frame's instruction, index 0
    # n-step returns never cross an episode boundary in the loaded buffer
    batch = loaded.gather(torch.arange(len(loaded)), torch.zeros(len(loaded), dtype=torch.long), n_step=10, gamma=1.0)
    ends = flat["done"].nonzero()[:, 0]
    starts = torch.cat([torch.tensor([0]), ends[:-1] + 1])
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        assert batch["n_step_reward"][start].item() == pytest.approx(flat["reward"][start : end + 1].sum().item(), abs=1e-5)


def test_recorded_demos_load_with_terminal_successes(tmp_path):
    from embodied.data.record import RecordConfig, record

    root = tmp_path / "reach"
    record(RecordConfig(task="Reach", episodes=4, root=str(root), num_envs=4, cameras=("front",), image_size=16,
                        video=False), progress=False)
    buffer = from_lerobot(root)
    assert buffer.num_envs == 1 and int(buffer.done.sum()) == 4
    assert torch.equal(buffer.terminated, buffer.done), "expert episodes end on success: terminal"
    assert buffer.next_obs["observation.state"][0, 0].equal(buffer.obs["observation.state"][1, 0])
