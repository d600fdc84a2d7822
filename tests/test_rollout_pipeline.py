"""Staged envs and the pipelined rollout: a staged env is the same env as one batch, and the
pipelined and collocated modes give identical rollouts for the same seeds."""

import dataclasses

import pytest
import torch

import sims
from embodied.runner.rollout import EpisodeTracker, collect_rollout
from embodied.runner.stages import StagedEnv
from policies import MLPPolicyConfig, make_policy
from policies.vla.backbone import VLMConfig
from policies.vla.flow import FlowVLAConfig


def test_a_staged_env_resets_and_steps_like_one_batch():
    cfg = sims.EnvConfig(task="PickCube", num_envs=6, seed=3, max_episode_steps=5)
    whole, staged = sims.make(cfg), StagedEnv(cfg, num_stages=3)
    obs_whole, obs_staged = whole.reset(seed=3), staged.reset(seed=3)
    for key in ("observation.state", "observation.environment_state"):
        torch.testing.assert_close(obs_staged[key], obs_whole[key], rtol=0, atol=0)
    assert obs_staged["task"] == obs_whole["task"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(7):  # through an auto-reset (episodes of 5 steps)
        action = torch.rand(6, whole.action_dim, generator=generator) * 2 - 1
        a, b = whole.step(action), staged.step(action)
        torch.testing.assert_close(b[0]["observation.state"], a[0]["observation.state"], rtol=0, atol=0)
        for i in (1, 2, 3):
            torch.testing.assert_close(b[i], a[i], rtol=0, atol=0)
        assert ("final_observation" in b[4]) == ("final_observation" in a[4])
    # get_state / set_state / rng state round-trip through the stages
    state, rng = staged.get_state(), staged.get_rng_state()
    torch.testing.assert_close(state["physics"], whole.get_state()["physics"], rtol=0, atol=0)
    swap = torch.tensor([4, 1])  # env 1 (stage 0) takes env 4's state, env 4 (stage 2) env 1's
    staged.set_state({k: v[swap] for k, v in state.items()}, env_ids=torch.tensor([1, 4]))
    torch.testing.assert_close(staged.get_state()["physics"][[1, 4]], state["physics"][swap], rtol=0, atol=0)
    staged.set_rng_state(rng)
    assert staged.get_rng_state() == whole.get_rng_state()
    staged.close()


def test_a_staged_env_shares_its_stages_step_counters():
    cfg = sims.EnvConfig(task="Reach", num_envs=4, seed=0, max_episode_steps=5)
    staged = StagedEnv(cfg, num_stages=2)
    staged.reset(seed=0)
    still = torch.zeros(4, staged.action_dim)
    staged.step(still)
    assert staged.elapsed_steps.tolist() == [1, 1, 1, 1]
    staged.elapsed_steps.copy_(torch.tensor([1, 4, 1, 4]))  # as rsl_rl spreads episode starts
    truncated = staged.step(still)[3]
    assert truncated.tolist() == [False, True, False, True]
    assert staged.elapsed_steps.tolist() == [2, 0, 2, 0]  # the truncated envs restarted
    staged.close()


def rollout_in_mode(env_cfg, policy_cfg, pipelined: bool, seed: int = 0):
    env = StagedEnv(env_cfg, num_stages=2, pipelined=pipelined)
    obs = env.reset(seed=env_cfg.seed)
    torch.manual_seed(seed)
    policy = make_policy(policy_cfg, obs, env.action_dim)
    tracker = EpisodeTracker(env.num_envs, env.device)
    rollout, next_obs, next_value = collect_rollout(env, policy, obs, num_steps=4, gamma=0.99, tracker=tracker)
    env.close()
    return rollout, next_obs, next_value, tracker.pop()


@pytest.mark.parametrize("policy_kind", ["mlp", "flow_vla"])
def test_pipelined_and_collocated_rollouts_are_identical(policy_kind):
    if policy_kind == "mlp":
        env_cfg = sims.EnvConfig(task="Reach", num_envs=8, max_episode_steps=5)
        policy_cfg = MLPPolicyConfig(chunk_size=2)
    else:
        env_cfg = sims.EnvConfig(task="Reach", num_envs=4, obs_mode="rgb", cameras=("front",),
                                 render=sims.RenderSettings(32, 32), max_episode_steps=5)
        policy_cfg = FlowVLAConfig(vlm=VLMConfig(cameras=("front",), image_size=(32, 32)), chunk_size=2, num_steps=3)
    a = rollout_in_mode(env_cfg, policy_cfg, pipelined=False)
    b = rollout_in_mode(env_cfg, policy_cfg, pipelined=True)
    for key in ("actions", "log_probs", "values", "rewards", "dones"):
        torch.testing.assert_close(b[0][key], a[0][key], rtol=0, atol=0, msg=key)
    for key, value in a[0]["obs"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b[0]["obs"][key], value, rtol=0, atol=0, msg=key)
    assert (b[0]["obs"]["task"] == a[0]["obs"]["task"]).all()
    torch.testing.assert_close(b[2], a[2], rtol=0, atol=0)
    assert a[0]["dones"].any(), "the rollout should cross episode ends"
    assert sorted(map(str, a[3])) == sorted(map(str, b[3]))


def test_the_trainer_runs_a_pipelined_rollout(tmp_path):
    from embodied.config import load_config
    from embodied.runner.trainer import TrainConfig, Trainer

    cfg = load_config(TrainConfig, "configs/ppo_reach_state.yaml", [
        f"run_dir={tmp_path / 'run'}", "env.num_envs=8", "rollout.mode=pipelined", "rollout.stages=2",
        "total_env_steps=256", "algo.num_steps=16", "eval.every=0", "eval.episodes=4", "log.final_video=false",
    ])
    trainer = Trainer(cfg)
    assert isinstance(trainer.env, StagedEnv) and trainer.env.pipelined
    result = trainer.train()
    assert trainer.env_steps == 256 and 0.0 <= result["success_rate"] <= 1.0
    with pytest.raises(ValueError, match="rollout.stages"):
        Trainer(dataclasses.replace(cfg, run_dir=str(tmp_path / "bad"), rollout=dataclasses.replace(cfg.rollout, stages=1)))
