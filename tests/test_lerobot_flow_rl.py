"""LeRobot's SmolVLA under our RL (policies/lerobot_flow_rl.py), on a tiny SmolVLA checkpoint
built locally (a random few-hundred-thousand-parameter SmolVLM + action expert, saved with
LeRobot's own save_pretrained and processors) and loaded through the same path as a hub
checkpoint. Nothing here reaches a network.

Not covered here (needs hub weights / a GPU): lerobot/smolvla_base's real weights, and pi0,
whose Gemma 2B + 300M sizes are fixed in LeRobot (no tiny variant can be built)."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
import torch

import sims
from embodied.algos.ppo import PPOConfig
from embodied.config import load_config
from embodied.runner.trainer import TrainConfig, Trainer
from policies import make_policy
from policies.base import Policy
from policies.lerobot_flow_rl import (
    LeRobotFlowConfig,
    LeRobotFlowPolicy,
    build_tiny_smolvla,
    load_lerobot_flow_policy,
)

pytest.importorskip("lerobot")

NUM_ENVS = 4
QUIET = ["log.tensorboard=false", "log.progress_bar=false", "log.final_video=false", "checkpoint.every=0", "eval.every=0"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a LeRobot flow RL test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SmolVLA `pretrained_model` folder fitting Reach (25-dim state, 7-dim actions, one 32x32 camera)."""
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    stats = {
        "observation.state": {"mean": 0.1 * torch.randn(25, generator=generator), "std": 0.5 + torch.rand(25, generator=generator)},
        "action": {"mean": torch.zeros(7), "std": torch.full((7,), 0.5)},
    }
    return build_tiny_smolvla(tmp_path_factory.mktemp("smolvla"), chunk_size=4, num_steps=4, stats=stats)


@pytest.fixture(scope="module")
def obs():
    env = sims.make("Reach", num_envs=NUM_ENVS, obs_mode="rgb", cameras=("front",), render=sims.RenderSettings(32, 32))
    observation = env.reset(seed=0)
    env.close()
    return observation


def policy_of(checkpoint, **overrides) -> LeRobotFlowPolicy:
    torch.manual_seed(0)
    return load_lerobot_flow_policy(checkpoint, **overrides)


@pytest.mark.parametrize("likelihood", ["sde", "noise"])
@pytest.mark.parametrize("stochastic_steps", ["all", (1, 3)])
def test_act_log_prob_equals_the_recomputed_chain_log_prob(checkpoint, obs, likelihood, stochastic_steps):
    policy = policy_of(checkpoint, likelihood=likelihood, stochastic_steps=stochastic_steps, action_dim=7)
    out = policy.act(obs)
    assert out.action.shape == (NUM_ENVS, 4, 7) and out.extras["chain"].shape == (NUM_ENVS, 5, 4, 32)
    assert out.action.abs().max() <= 1.0 and out.value.shape == (NUM_ENVS,)
    elements, entropy, value = policy.evaluate_elements(obs, out.action, out.extras)
    assert elements.shape == (NUM_ENVS, 4, 7)
    torch.testing.assert_close(elements.flatten(1).sum(1), out.log_prob, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(value, out.value)
    assert torch.isfinite(entropy).all()
    # only the executed elements (first 4 actions' first 7 values) were sampled: the padding
    # dimensions followed LeRobot's Euler step from the same chain
    chain = out.extras["chain"]
    assert not torch.equal(chain[:, -1, :, :7], policy.sample(obs, deterministic=True, noise=chain[:, 0])[0][:, -1, :, :7])
    # the log-prob is that of this chain: another chain scores differently
    other = policy.act(obs)
    assert not torch.allclose(policy.evaluate(obs, out.action, other.extras)[0], out.log_prob)


def test_deterministic_chain_is_lerobots_own_sampler(checkpoint, obs):
    """Without stochastic steps our chain reproduces LeRobot's predict_action_chunk for the same
    noise (which runs here because loading a SmolVLA installs the legacy-crop cache)."""
    policy = policy_of(checkpoint, action_dim=7)
    noise = torch.randn(NUM_ENVS, 4, 32, generator=torch.Generator().manual_seed(1))
    chain, log_prob = policy.sample(obs, deterministic=True, noise=noise)
    assert torch.equal(log_prob, torch.zeros(NUM_ENVS))
    reference = policy.policy.predict_action_chunk(policy.processed_batch(obs), noise=noise.clone())
    torch.testing.assert_close(chain[:, -1, :, :7], reference, atol=1e-5, rtol=1e-5)
    torch.manual_seed(5)
    drawn = torch.randn(NUM_ENVS, 4, 32)
    torch.manual_seed(5)
    out = policy.act(obs, deterministic=True)
    torch.testing.assert_close(out.extras["chain"][:, 0], drawn)
    expected = policy.postprocessor(policy.policy.predict_action_chunk(policy.processed_batch(obs), noise=drawn)).clamp(-1, 1)
    torch.testing.assert_close(out.action, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("likelihood", ["sde", "noise"])
def test_log_prob_gradients_reach_the_action_expert_not_the_frozen_vlm(checkpoint, obs, likelihood):
    policy = policy_of(checkpoint, likelihood=likelihood, action_dim=7)
    out = policy.act(obs)
    policy.evaluate(obs, out.action, out.extras)[0].sum().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".lm_expert.layers." in n for n in grads) and "policy.model.action_out_proj.weight" in grads
    assert "policy.model.state_proj.weight" in grads  # LeRobot's train_state_proj: the state enters SmolVLA's prefix
    if likelihood == "noise":
        assert "noise_head.2.weight" in grads
    vlm = {n for n, _ in policy.named_parameters() if ".vlm_with_expert.vlm." in n}
    assert vlm and not vlm & set(grads) and policy.backbone_parameters() == []  # train_expert_only


def test_vlm_trains_when_the_lerobot_config_says_so(checkpoint, obs):
    policy = policy_of(checkpoint, action_dim=7, lerobot_overrides={"train_expert_only": False, "freeze_vision_encoder": False})
    assert policy.backbone_parameters()
    out = policy.act(obs)
    policy.evaluate(obs, out.action, out.extras)[0].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.backbone_parameters())


def snapshot(policy: Policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


def run(cfg: TrainConfig) -> tuple[Trainer, dict]:
    trainer = Trainer(cfg)
    before = snapshot(trainer.policy)
    result = trainer.train()
    changed = {n for n, p in trainer.policy.named_parameters() if n in before and not torch.equal(p, before[n])}
    return trainer, {"result": result, "changed": changed}


def recipe(tmp_path, checkpoint, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "configs/grpo_reach_lerobot_smolvla.yaml", [
        *QUIET, f"run_dir={tmp_path / 'run'}", f"policy.path={checkpoint}", "env.num_envs=4", "env.max_episode_steps=8",
        *overrides,
    ])


def test_grpo_recipe_runs_end_to_end_and_moves_the_expert(tmp_path, checkpoint):
    cfg = recipe(tmp_path, checkpoint, "total_env_steps=48", "algo.group_size=2", "algo.outcome=return",
                 "algo.dynamic_sampling=false", "algo.num_minibatches=2", "algo.lr=1e-3", "policy.likelihood=noise")
    trainer, out = run(cfg)
    assert trainer.env_steps >= 48 and trainer.iteration > 0 and "success_rate" in out["result"]
    assert any(".lm_expert." in n for n in out["changed"]) and any(n.startswith("noise_head") for n in out["changed"])
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    # the run's policy saves to our layout and reloads with the same chain log-probs
    trainer.policy.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["kind"] == "lerobot_flow"
    again = Policy.from_pretrained(tmp_path / "saved", overrides={"noise_level": 0.3})
    assert isinstance(again, LeRobotFlowPolicy) and again.config.likelihood == "noise"
    obs = trainer.obs
    act = trainer.policy.act(obs)
    torch.testing.assert_close(again.evaluate(obs, act.action, act.extras)[0], act.log_prob, atol=1e-4, rtol=1e-5)


def test_ppo_runs_end_to_end_with_a_critic(tmp_path, checkpoint):
    cfg = recipe(tmp_path, checkpoint, "total_env_steps=32", "env.terminate_on_success=false")
    cfg = dataclasses.replace(cfg, algo=PPOConfig(num_steps=2, update_epochs=1, num_minibatches=2, lr=1e-3,
                                                  log_prob_level="token", gamma=0.9, critic_lr=1e-2))
    trainer, out = run(cfg)
    changed = out["changed"]
    assert any(".lm_expert." in n for n in changed) and any(n.startswith("value_head") for n in changed)
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())


def test_supervised_loss_is_lerobots_flow_matching_and_decreases(checkpoint, obs):
    policy = policy_of(checkpoint, action_dim=7)
    actions = torch.rand(NUM_ENVS, 2, 7) * 2 - 1  # a shorter chunk than the model's 4: padding masked
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(15):
        torch.manual_seed(step % 3)
        loss, metrics = policy.supervised_loss(obs, actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(metrics["flow_mse"])
    assert losses[-1] < losses[0]


def test_make_policy_and_clear_errors(checkpoint, obs, tmp_path):
    policy = make_policy(LeRobotFlowConfig(path=str(checkpoint)), obs, 7)
    assert isinstance(policy, LeRobotFlowPolicy) and policy.num_steps == 4 and policy.config.chunk_size == 4
    assert policy_of(checkpoint, num_steps=2, chunk_size=2).act(obs).extras["chain"].shape == (NUM_ENVS, 3, 4, 32)
    with pytest.raises(ValueError, match="emits 7-dim actions"):
        make_policy(LeRobotFlowConfig(path=str(checkpoint)), obs, 4)
    with pytest.raises(ValueError, match="stochastic_steps"):
        policy_of(checkpoint, stochastic_steps=(4,))
    with pytest.raises(ValueError, match="likelihood"):
        policy_of(checkpoint, likelihood="ode")
    act_folder = tmp_path / "act"
    act_folder.mkdir()
    (act_folder / "config.json").write_text(json.dumps({"type": "act"}))
    with pytest.raises(ValueError, match="supports smolvla, pi0"):
        load_lerobot_flow_policy(act_folder)
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        load_lerobot_flow_policy("someone/not-cached-smolvla")
    with pytest.raises(KeyError, match="observation_map"):
        policy.act({k: v for k, v in obs.items() if k != "observation.images.front"})
    out = policy.act(obs)
    with pytest.raises(ValueError, match="expected"):
        policy.evaluate(obs, out.action, {"chain": out.extras["chain"][:, :2]})


def test_the_plain_lerobot_adapter_runs_a_smolvla(checkpoint, obs):
    """kind: lerobot (evaluation, frozen bases) loads and samples a SmolVLA too: LeRobot's own
    select/predict path, the same chunk as lerobot_flow's deterministic chain for the same noise."""
    from policies.lerobot_adapter import load_lerobot_policy

    plain = load_lerobot_policy(checkpoint)
    flow = policy_of(checkpoint, action_dim=7)
    torch.manual_seed(3)
    expected = flow.act(obs, deterministic=True).action
    torch.manual_seed(3)
    action = plain.act(obs, deterministic=True).action
    assert action.shape == expected.shape == (NUM_ENVS, 4, 7)
    torch.testing.assert_close(action, expected, atol=1e-5, rtol=1e-5)
