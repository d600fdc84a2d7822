"""RL on VLAs: PPO and GRPO updates move both VLA families the right way at every log-prob
level, GRPO's group rollouts keep the instructions, and a saved VLA's sampling settings can be
changed for RL."""

import dataclasses

import numpy as np
import pytest
import torch

import sims
from embodied.algos.grpo import GRPO, GRPOConfig
from embodied.algos.ppo import PPO, PPOConfig
from embodied.runner.rollout import EpisodeTracker, select_obs, stack_obs
from embodied.runner.trainer import load_policy
from policies import make_policy, observed_sizes
from policies.base import Policy
from policies.mlp import flat_observation
from policies.vla.autoregressive import ARVLAConfig
from policies.vla.backbone import VLMConfig
from policies.vla.flow import FlowVLAConfig

NUM_ENVS = 8


@pytest.fixture(scope="module")
def reach_obs():
    env = sims.make("Reach", num_envs=NUM_ENVS, obs_mode="rgb", cameras=("front",), render=sims.RenderSettings(32, 32))
    return env.reset(seed=0)


def tiny_vla(kind: str, obs, action_dim: int = 7) -> Policy:
    torch.manual_seed(0)
    vlm = VLMConfig(cameras=("front",), image_size=(32, 32))
    if kind == "ar_vla":
        config = ARVLAConfig(vlm=vlm, chunk_size=2)
    else:
        config = FlowVLAConfig(vlm=vlm, chunk_size=2, num_steps=3, stochastic_steps=(1, 2))
    return make_policy(config, obs, action_dim)


def advantage_batch(policy: Policy, obs, algo_name: str) -> dict:
    """One decision per env with advantages +1 (first half) and -1 (second half): GRPO's flat
    batch, or PPO's one-step rollout whose terminal rewards make GAE's advantages exactly those."""
    with torch.no_grad():
        out = policy.act(obs)
    advantages = torch.tensor([1.0] * (NUM_ENVS // 2) + [-1.0] * (NUM_ENVS // 2))
    if algo_name == "grpo":
        return {
            "obs": {**{k: v for k, v in obs.items() if isinstance(v, torch.Tensor)}, "task": np.array(obs["task"], dtype=object)},
            "actions": out.action, "log_probs": out.log_prob, "extras": out.extras, "advantages": advantages, "stats": {},
        }
    return {
        "obs": stack_obs([obs]), "actions": out.action[None], "log_probs": out.log_prob[None],
        "extras": {k: v[None] for k, v in out.extras.items()}, "values": out.value[None],
        "rewards": (out.value + advantages)[None], "dones": torch.ones(1, NUM_ENVS, dtype=torch.bool),
    }


@pytest.mark.parametrize("kind,level", [
    ("ar_vla", "chunk"), ("ar_vla", "action"), ("ar_vla", "token"),
    ("flow_vla", "chunk"), ("flow_vla", "action"), ("flow_vla", "token"),
])
@pytest.mark.parametrize("algo_name", ["ppo", "grpo"])
def test_one_update_raises_the_likelihood_of_positive_advantage_actions(reach_obs, kind, level, algo_name):
    policy = tiny_vla(kind, reach_obs)
    rollout = advantage_batch(policy, reach_obs, algo_name)
    if algo_name == "ppo":  # vf_coef 0: only the policy gradient moves the shared backbone
        algo = PPO(policy, PPOConfig(lr=1e-4, update_epochs=1, num_minibatches=1, log_prob_level=level, norm_adv=False,
                                     vf_coef=0.0))
    else:
        algo = GRPO(policy, GRPOConfig(lr=1e-4, update_epochs=1, num_minibatches=1, log_prob_level=level))
    prepared = algo.prepare(rollout, torch.zeros(NUM_ENVS))
    torch.testing.assert_close(prepared["advantages"], torch.tensor([1.0] * (NUM_ENVS // 2) + [-1.0] * (NUM_ENVS // 2)))
    batch = dict(prepared, log_probs=rollout["log_probs"].reshape(-1))
    expected_k = {"chunk": 1, "action": 2, "token": 14}[level]
    assert prepared["log_probs"].shape == (NUM_ENVS, expected_k)
    # Recomputed behaviour log-probs sum to the ones act() recorded.
    torch.testing.assert_close(prepared["log_probs"].sum(1), batch["log_probs"], atol=1e-4, rtol=0)
    obs = select_obs(batch["obs"], torch.arange(NUM_ENVS))
    with torch.no_grad():
        before = policy.evaluate(obs, batch["actions"], batch["extras"])[0]
    metrics = algo.update(prepared, 0)
    with torch.no_grad():
        after = policy.evaluate(obs, batch["actions"], batch["extras"])[0]
    change = after - before
    assert abs(metrics["approx_kl"]) < 1e-4  # the single minibatch saw ratio 1
    assert (batch["advantages"] * change).sum() > 0, "the advantage-weighted likelihood must rise"
    assert change[: NUM_ENVS // 2].mean() > change[NUM_ENVS // 2 :].mean()


@pytest.mark.parametrize("kind", ["ar_vla", "flow_vla"])
def test_grpo_groups_on_a_vla_keep_instructions_and_share_initial_states(kind):
    env = sims.make("Reach", num_envs=4, obs_mode="rgb", cameras=("front",), render=sims.RenderSettings(32, 32),
                    max_episode_steps=6)
    obs = env.reset(seed=0)
    policy = tiny_vla(kind, obs)
    algo = GRPO(policy, GRPOConfig(group_size=2, dynamic_sampling=False, update_epochs=1, num_minibatches=1,
                                   outcome="return", log_prob_level="action"))
    episodes = algo.run_group_episodes(env, EpisodeTracker(4, env.device))
    first = episodes["obs"]
    assert first["task"].shape[1] == 4 and all(t in env.task.instructions for t in first["task"][0])
    torch.testing.assert_close(first["observation.state"][0, 0], first["observation.state"][0, 1])
    batch, _, _ = algo.collect(env, obs, EpisodeTracker(4, env.device))
    assert len(batch["obs"]["task"]) == batch["actions"].shape[0] > 0
    metrics = algo.update(algo.prepare(batch, torch.zeros(4)), 0)
    assert metrics["batch_steps"] == batch["actions"].shape[0]


def test_a_saved_vla_takes_its_sampling_settings_from_the_run_config(tmp_path, reach_obs):
    """Architecture from the checkpoint, temperature / noise level from the RL config."""
    policy = tiny_vla("ar_vla", reach_obs)
    policy.save_pretrained(tmp_path / "ar")
    hot = Policy.from_pretrained(tmp_path / "ar", overrides={"temperature": 2.0})
    assert hot.config.temperature == 2.0 and hot.config.vlm == policy.config.vlm
    out = hot.act(reach_obs)
    scaled = hot.evaluate(reach_obs, out.action, out.extras)[0]
    torch.testing.assert_close(scaled, out.log_prob, atol=1e-4, rtol=0)
    assert not torch.allclose(policy.evaluate(reach_obs, out.action, out.extras)[0], scaled)


@pytest.mark.parametrize("kind", ["ar_vla", "flow_vla"])
def test_lora_fine_tuning_trains_adapters_and_heads_only_and_reloads(tmp_path, reach_obs, kind):
    policy = tiny_vla(kind, reach_obs)
    policy.save_pretrained(tmp_path / "base")
    lora = Policy.from_pretrained(tmp_path / "base", overrides={"lora_rank": 4, "lora_alpha": 8.0})
    assert lora.config.lora_rank == 4
    backbone = lora.backbone_parameters()
    names = {id(p): n for n, p in lora.named_parameters()}
    assert backbone and all("lora_" in names[id(p)] for p in backbone)
    frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    assert any(".q_proj.base_layer" in n for n in frozen)
    torch.manual_seed(1)
    out = lora.act(reach_obs)
    # LoRA's B starts at zero: the adapted policy computes what the base did
    torch.testing.assert_close(policy.evaluate(reach_obs, out.action, out.extras)[0], out.log_prob, atol=1e-4, rtol=0)
    algo = PPO(lora, PPOConfig(lr=1e-3, head_lr=1e-4, critic_lr=1e-2, update_epochs=1, num_minibatches=1))
    groups = {"backbone": 1e-3, "heads": 1e-4, "critic": 1e-2}
    if kind == "ar_vla":  # its action head is the LM head, frozen with the backbone (as OpenVLA's LoRA)
        del groups["heads"]
    assert {g["name"]: g["lr"] for g in algo.optimizer.param_groups} == groups
    rollout = advantage_batch(lora, reach_obs, "ppo")
    algo.update(algo.prepare(rollout, torch.zeros(NUM_ENVS)), 0)
    for n, p in lora.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} is frozen under LoRA but changed"
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in lora.named_parameters())
    lora.save_pretrained(tmp_path / "lora")
    again = Policy.from_pretrained(tmp_path / "lora")
    torch.testing.assert_close(
        again.evaluate(reach_obs, out.action, out.extras)[0], lora.evaluate(reach_obs, out.action, out.extras)[0]
    )


@pytest.mark.parametrize("kind", ["ar_vla", "flow_vla"])
def test_a_separate_state_critic_is_added_to_a_saved_vla_and_trains_alone(tmp_path, reach_obs, kind):
    policy = tiny_vla(kind, reach_obs)
    policy.save_pretrained(tmp_path / "base")
    vla = Policy.from_pretrained(tmp_path / "base", overrides={"critic": "state"})
    assert vla.config.critic == "state" and {id(p) for p in vla.state_critic.parameters()} <= {id(p) for p in vla.critic_parameters()}
    out = vla.act(reach_obs)
    torch.testing.assert_close(out.value, vla.state_critic(vla.normalized_state(reach_obs))[:, 0])
    actor_before = {n: p.detach().clone() for n, p in vla.named_parameters() if not n.startswith(("state_critic", "value_head"))}
    algo = PPO(vla, PPOConfig(critic_lr=1e-2, update_epochs=1, num_minibatches=1, critic_warmup_iterations=1))
    algo.update(algo.prepare(advantage_batch(vla, reach_obs, "ppo"), torch.zeros(NUM_ENVS)), 0)
    assert all(torch.equal(p, actor_before[n]) for n, p in vla.named_parameters() if n in actor_before)
    assert not torch.allclose(vla.act(reach_obs).value, out.value)
    vla.save_pretrained(tmp_path / "critic")
    again = Policy.from_pretrained(tmp_path / "critic")
    torch.testing.assert_close(again.value(reach_obs), vla.value(reach_obs))
    with pytest.raises(ValueError, match="policy.critic"):
        Policy.from_pretrained(tmp_path / "base", overrides={"critic": "separate"})


@pytest.mark.parametrize("kind", ["ar_vla", "flow_vla"])
def test_an_asymmetric_critic_reads_privileged_state_the_actor_never_sees(tmp_path, reach_obs, kind):
    policy = tiny_vla(kind, reach_obs)  # the actor reads images, the instruction and observation.state
    policy.save_pretrained(tmp_path / "base")
    keys = ("observation.state", "observation.environment_state")
    recipe = dataclasses.replace(policy.config, critic="state", critic_keys=keys, critic_dim=0)
    vla = load_policy(tmp_path / "base", observed_sizes(recipe, reach_obs, 7))
    assert vla.config.critic_dim == flat_observation(reach_obs, keys).shape[1]
    vla.observe(reach_obs)  # a training rollout's batch sets the critic's running statistics
    torch.testing.assert_close(vla.critic_inputs(reach_obs).mean(0), torch.zeros(vla.config.critic_dim), atol=1e-3, rtol=0)
    with torch.no_grad():
        out = vla.act(reach_obs)
        goal_moved = {**reach_obs, "observation.environment_state": reach_obs["observation.environment_state"] + 0.1}
        log_prob, _, value = vla.evaluate(reach_obs, out.action, out.extras)
        log_prob_moved, _, value_moved = vla.evaluate(goal_moved, out.action, out.extras)
    torch.testing.assert_close(log_prob_moved, log_prob)
    assert not torch.allclose(value_moved, value)
    vla.save_pretrained(tmp_path / "critic")
    again = Policy.from_pretrained(tmp_path / "critic")
    torch.testing.assert_close(again.value(reach_obs), vla.value(reach_obs))
    assert not hasattr(load_policy(tmp_path / "base", recipe, adapters=False), "state_critic")  # evaluation
    with pytest.raises(ValueError, match="cannot change"):
        Policy.from_pretrained(tmp_path / "critic", overrides={"critic": "state", "critic_keys": ("observation.state",), "critic_dim": 3})
    with pytest.raises(ValueError, match="set policy.critic: state"):
        Policy.from_pretrained(tmp_path / "base", overrides={"critic_keys": keys, "critic_dim": 31})
    with pytest.raises(ValueError, match="critic_dim"):
        Policy.from_pretrained(tmp_path / "base", overrides={"critic": "state", "critic_keys": keys})


def test_a_run_from_a_saved_vla_refuses_settings_it_would_ignore(tmp_path, reach_obs):
    """A recipe may change how a saved flow VLA samples (noise level, stochastic steps) and add
    to it (a critic, Flow-Noise's std network) but not what it is: another chunk size is an
    error rather than a run that silently keeps the saved one."""
    from embodied.runner.trainer import check_fixed_fields

    tiny_vla("flow_vla", reach_obs).save_pretrained(tmp_path / "sde")
    recipe = FlowVLAConfig(noise_level=0.9, stochastic_steps=(0,), critic="state")
    loaded = load_policy(tmp_path / "sde", observed_sizes(recipe, reach_obs, 7))
    check_fixed_fields(recipe, loaded, "init_from sde")
    assert (loaded.config.noise_level, loaded.config.stochastic_steps) == (0.9, (0,))
    with pytest.raises(ValueError, match="init_from sde: the saved policy fixes chunk_size"):
        check_fixed_fields(dataclasses.replace(recipe, chunk_size=8), loaded, "init_from sde")


def test_flow_noise_is_added_to_a_flow_sde_checkpoint_for_rl(tmp_path, reach_obs):
    """pi_RL's Flow-Noise on an SFT checkpoint: `likelihood: noise` adds the std network with
    every std at the middle of its range and the same velocity field; saved and reloaded it
    stays a Flow-Noise policy, and a recipe's default (sde) does not take it away."""
    sde = tiny_vla("flow_vla", reach_obs)
    sde.save_pretrained(tmp_path / "sde")
    recipe = dataclasses.replace(sde.config, likelihood="noise")
    noisy = load_policy(tmp_path / "sde", recipe)
    assert noisy.config.likelihood == "noise" and noisy.noise_head is not None
    x = torch.randn(NUM_ENVS, 2, 7)
    t = torch.full((NUM_ENVS,), 0.5)
    with torch.no_grad():
        prefix = noisy.encode_prefix(reach_obs)
        velocity, std = noisy.velocity_field(prefix, x, t)
        torch.testing.assert_close(velocity, sde.velocity_field(sde.encode_prefix(reach_obs), x, t)[0])
    torch.testing.assert_close(std, torch.full_like(std, sum(noisy.config.noise_std_range) / 2))
    out = noisy.act(reach_obs)
    log_prob, _, _ = noisy.evaluate(reach_obs, out.action, out.extras)
    torch.testing.assert_close(log_prob, out.log_prob, atol=1e-4, rtol=0)
    noisy.save_pretrained(tmp_path / "noise")
    again = load_policy(tmp_path / "noise", sde.config)  # a recipe that does not ask for Flow-Noise
    assert again.config.likelihood == "noise"
    torch.testing.assert_close(again.noise_head[2].weight, noisy.noise_head[2].weight)
    with pytest.raises(ValueError, match="likelihood"):
        load_policy(tmp_path / "sde", dataclasses.replace(sde.config, likelihood="ode"))
