"""V-GPS: the best of K base samples by Q, the base unchanged; a run's critic reloads."""

import pytest
import torch

import sims
from embodied.algos.offpolicy import QEnsemble
from embodied.runner.checkpoint import save_checkpoint
from policies import MLPPolicyConfig, make_policy
from policies.vgps import ValueGuidedPolicy, load_run_critic


def test_vgps_picks_the_sample_q_ranks_highest_and_leaves_the_base_unchanged():
    env = sims.make("Reach", num_envs=32, obs_mode="state", seed=0)
    obs = env.reset(seed=0)
    torch.manual_seed(0)
    base = make_policy(MLPPolicyConfig(init_log_std=0.0), obs, env.action_dim)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    target = torch.full((env.action_dim,), 0.5)

    def q_function(features, action):  # prefers actions near `target`; two identical members
        q = -(action - target).pow(2).sum(1)
        return torch.stack([q, q + 1.0])

    steered = ValueGuidedPolicy(base, q_function, num_samples=16, include_mode=False)
    torch.manual_seed(1)
    chosen = steered.act(obs).action[:, 0]
    torch.manual_seed(1)
    samples = base.sample_chunks(obs, 16)[:, :, 0]  # the same draws
    best = samples[torch.arange(32), (-(samples.clamp(-1, 1) - target).pow(2).sum(2)).argmax(1)]
    assert torch.equal(chosen, best)
    plain = (samples[:, 0] - target).pow(2).sum(1).mean()
    assert (chosen - target).pow(2).sum(1).mean() < 0.5 * plain, "steering moves actions towards high Q"
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_temperature_scales_the_proposals_spread_around_the_mode():
    env = sims.make("Reach", num_envs=64, obs_mode="state", seed=0)
    obs = env.reset(seed=0)
    torch.manual_seed(0)
    base = make_policy(MLPPolicyConfig(init_log_std=0.0), obs, env.action_dim)
    mode = base.act(obs, deterministic=True).action
    proposals: dict[float, torch.Tensor] = {}
    for temperature in (1.0, 0.25, 0.0):
        steered = ValueGuidedPolicy(base, lambda f, a: torch.stack([a[:, 0], a[:, 0]]), num_samples=8,
                                    include_mode=False, temperature=temperature)
        steered.scores = lambda o, chunks, t=temperature: (proposals.setdefault(t, chunks), chunks[..., 0, 0])[1]
        steered.act(obs)
    spreads = {t: (chunks - mode[:, None]).std().item() for t, chunks in proposals.items()}
    assert spreads[0.0] == 0.0, "temperature 0 proposes the mode only"
    assert abs(spreads[0.25] / spreads[1.0] - 0.25) < 0.02


def test_a_run_critic_reloads(tmp_path):
    env = sims.make("Reach", num_envs=2, obs_mode="state", seed=0)
    obs = env.reset(seed=0)
    policy = make_policy(MLPPolicyConfig(hidden_sizes=(8,)), obs, env.action_dim)
    critic = QEnsemble(policy.config.obs_dim, env.action_dim, members=3, hidden_sizes=(16, 8))
    (tmp_path / "config.yaml").write_text("name: x\n")
    save_checkpoint(tmp_path, 1, policy, {"algo": {"critic": critic.state_dict()}}, keep_last=1)
    loaded = load_run_critic(tmp_path)
    features, action = torch.randn(5, policy.config.obs_dim), torch.randn(5, env.action_dim)
    assert torch.allclose(loaded(features, action), critic(features, action))


def test_a_chunk_level_q_scores_whole_chunks_and_refines_them():
    """chunk_q: Q reads the flattened chunk; with refine_steps the kept proposals climb Q
    (PA-RL's local optimisation) and the result beats every proposal."""
    env = sims.make("Reach", num_envs=16, obs_mode="state", seed=0)
    obs = env.reset(seed=0)
    torch.manual_seed(0)
    base = make_policy(MLPPolicyConfig(init_log_std=0.0, chunk_size=3), obs, env.action_dim)
    target = torch.linspace(-0.5, 0.5, 3 * env.action_dim)

    def q_function(features, chunk):  # prefers chunks near `target`, last actions included
        q = -(chunk - target).pow(2).sum(1)
        return torch.stack([q, q])

    ranked = ValueGuidedPolicy(base, q_function, num_samples=8, include_mode=False, chunk_q=True)
    torch.manual_seed(1)
    chosen = ranked.act(obs).action
    torch.manual_seed(1)
    samples = base.sample_chunks(obs, 8)
    q = -(samples.flatten(2).clamp(-1, 1) - target).pow(2).sum(2)
    assert torch.equal(chosen, samples[torch.arange(16), q.argmax(1)])
    refined = ValueGuidedPolicy(base, q_function, num_samples=8, include_mode=False, chunk_q=True, keep=2,
                                refine_steps=5, step_size=0.1)
    torch.manual_seed(1)
    better = refined.act(obs).action
    assert better.shape == chosen.shape
    assert (q_function(None, better.flatten(1))[0] > q.max(1).values + 1e-4).all(), "ascent raised Q past the best sample"
    with pytest.raises(ValueError, match="chunk_q"):
        ValueGuidedPolicy(base, q_function, refine_steps=2)
