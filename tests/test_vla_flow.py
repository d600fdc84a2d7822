"""Flow-matching VLA: exact chain log-probs (Flow-Noise, Flow-SDE), the SDE's marginals on an
analytic toy flow, flow-matching SFT, save/load, and input errors. Tiny models (32x32 images,
2 layers) keep the file fast on a CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from embodied.config import from_dict
from policies import make_policy
from policies.base import Policy
from policies.vla.backbone import TOKENIZER_FILE, VLMConfig, task_instructions, train_tokenizer
from policies.vla.flow import FlowVLAConfig, FlowVLAPolicy, sampling_cost
from policies.vla.flow_likelihood import sample_chain, time_grid

IMAGE = 32
N, STATE, ACTIONS, CHUNK, STEPS = 3, 5, 2, 3, 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(task_instructions(), VLMConfig().text_vocab_size)


def tiny_config(**overrides) -> FlowVLAConfig:
    vlm = VLMConfig(
        image_size=(IMAGE, IMAGE),
        vision_hidden=32,
        vision_intermediate=64,
        hidden=32,
        intermediate=64,
        max_text_tokens=8,
    )
    base = FlowVLAConfig(
        vlm=vlm,
        action_dim=ACTIONS,
        state_dim=STATE,
        chunk_size=CHUNK,
        num_steps=STEPS,
        expert_hidden=32,
        expert_heads=2,
        expert_intermediate=64,
        noise_hidden=16,
        value_hidden=16,
    )
    return dataclasses.replace(base, **overrides)


def make_obs(seed: int = 0, n: int = N) -> dict:
    g = torch.Generator().manual_seed(seed)
    tasks = ["pick up the red cube", "reach the goal", "push the cube to the target"]
    return {
        "observation.images.front": torch.randint(
            0, 256, (n, IMAGE, IMAGE, 3), generator=g, dtype=torch.uint8
        ),
        "observation.state": torch.randn(n, STATE, generator=g),
        "task": [tasks[i % len(tasks)] for i in range(n)],
    }


@pytest.mark.parametrize(
    "likelihood, stochastic_steps",
    [("sde", "all"), ("noise", "all"), ("sde", (1, 3)), ("noise", (0,))],
)
def test_rollout_log_prob_equals_recomputation(tokenizer, likelihood, stochastic_steps):
    torch.manual_seed(0)
    policy = FlowVLAPolicy(
        tiny_config(likelihood=likelihood, stochastic_steps=stochastic_steps), tokenizer
    )
    obs = make_obs()
    out = policy.act(obs)
    chain = out.extras["chain"]
    assert chain.shape == (N, STEPS + 1, CHUNK, ACTIONS)
    assert out.action.shape == (N, CHUNK, ACTIONS) and out.action.abs().max() <= 1.0
    assert torch.equal(out.action, chain[:, -1].clamp(-1, 1))
    log_prob, entropy, value = policy.evaluate(obs, out.action, out.extras)
    assert (log_prob - out.log_prob).abs().max() <= 1e-4
    assert torch.allclose(value, out.value, atol=1e-5)
    assert entropy.shape == (N,) and torch.isfinite(entropy).all()

    # deterministic steps are plain Euler steps and add nothing to the log-prob
    prefix = policy.encode_prefix(obs)
    grid = time_grid(STEPS)
    stochastic = policy.stochastic
    for k in set(range(STEPS)) - stochastic:
        velocity, _ = policy.velocity_field(prefix, chain[:, k], grid[k].expand(N))
        torch.testing.assert_close(
            chain[:, k + 1], chain[:, k] - (grid[k] - grid[k + 1]) * velocity, atol=1e-5, rtol=0
        )
    lengths = {k.shape[2] for k in prefix.kv.keys}
    assert lengths == {policy.prefix.length}, (
        "the prefix keys/values must not grow across denoising steps"
    )

    if likelihood == "noise":  # the learned std stays in its bounds and gets gradients
        _, std = policy.velocity_field(prefix, chain[:, 0], torch.ones(N))
        low, high = policy.config.noise_std_range
        assert low <= std.min() and std.max() <= high
        (-log_prob.mean()).backward()
        assert policy.noise_head[0].weight.grad.abs().sum() > 0
        assert policy.prefix.vision.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_deterministic_act_is_the_ode_and_expert_reads_the_prefix(tokenizer):
    torch.manual_seed(0)
    policy = FlowVLAPolicy(tiny_config(), tokenizer)
    obs = make_obs()
    torch.manual_seed(1)
    first = policy.act(obs, deterministic=True)
    torch.manual_seed(1)
    second = policy.act(obs, deterministic=True)
    assert torch.equal(first.action, second.action)
    assert torch.equal(first.log_prob, torch.zeros(N))

    prefix = policy.encode_prefix(obs)
    x, t = torch.randn(N, CHUNK, ACTIONS), torch.full((N,), 0.5)
    velocity, _ = policy.velocity_field(prefix, x, t)
    other = dict(obs, **{"observation.images.front": make_obs(seed=7)["observation.images.front"]})
    moved, _ = policy.velocity_field(policy.encode_prefix(other), x, t)
    assert (moved - velocity).abs().max() > 1e-4, (
        "the action expert must attend to the image tokens"
    )
    # a batch of several steps per env (as evaluate runs them) equals one step at a time
    both, _ = policy.velocity_field(
        prefix, torch.cat((x, x), 1).view(2 * N, CHUNK, ACTIONS), t.repeat_interleave(2)
    )
    torch.testing.assert_close(both[0::2], velocity, atol=1e-5, rtol=0)


def test_flow_sde_matches_ode_marginals_on_analytic_flow():
    """Data ~ N(mu, diag(s^2)): the exact velocity of x_t = t * noise + (1 - t) * x is
    E[noise - x | x_t] = -mu + (t - (1-t) s^2) / (t^2 + (1-t)^2 s^2) * (x_t - (1-t) mu)."""
    mu, s = torch.tensor([0.5, -0.3]), torch.tensor([0.3, 0.2])

    def field(x, t):
        t = t[:, None]
        gain = (t - (1 - t) * s**2) / (t**2 + (1 - t) ** 2 * s**2)
        return -mu + gain * (x - (1 - t) * mu), None

    g = torch.Generator().manual_seed(0)
    steps = 50
    noise = torch.randn(10_000, 2, generator=g)
    ode, ode_log_prob = sample_chain(field, noise, steps, frozenset(), "sde", 0.5)
    sde, sde_log_prob = sample_chain(
        field, noise, steps, frozenset(range(steps)), "sde", 0.5, generator=g
    )
    assert torch.equal(ode_log_prob, torch.zeros(len(noise))) and torch.isfinite(sde_log_prob).all()
    assert (sde[:, -1] - ode[:, -1]).abs().mean() > 0.05  # the SDE does move the samples
    torch.testing.assert_close(sde[:, -1].mean(0), ode[:, -1].mean(0), atol=0.015, rtol=0)
    torch.testing.assert_close(sde[:, -1].std(0), ode[:, -1].std(0), atol=0, rtol=0.05)
    # and both sit near the data distribution (Euler's bias shrinks the ODE's std a little)
    for samples in (ode[:, -1], sde[:, -1]):
        torch.testing.assert_close(samples.mean(0), mu, atol=0.015, rtol=0)
        torch.testing.assert_close(samples.std(0), s, atol=0, rtol=0.08)
    # intermediate marginals too: x_t ~ N((1-t) mu, t^2 + (1-t)^2 s^2)
    t = time_grid(steps)[steps // 2]
    torch.testing.assert_close(
        sde[:, steps // 2].std(0), (t**2 + (1 - t) ** 2 * s**2).sqrt(), atol=0, rtol=0.04
    )


def test_supervised_flow_matching_loss_decreases(tokenizer):
    torch.manual_seed(0)
    policy = FlowVLAPolicy(tiny_config(), tokenizer)
    obs = make_obs()
    actions = torch.rand(N, CHUNK, ACTIONS) * 2 - 1
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss, metrics = policy.supervised_loss(obs, actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(metrics["flow_mse"])
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses


def test_save_load_gives_identical_outputs(tmp_path, tokenizer):
    torch.manual_seed(0)
    policy = FlowVLAPolicy(tiny_config(likelihood="noise", stochastic_steps=(0, 2)), tokenizer)
    policy.set_state_stats(torch.linspace(-1, 1, STATE), torch.linspace(0.5, 2, STATE))
    policy.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path)
    assert isinstance(loaded, FlowVLAPolicy) and loaded.config == policy.config
    obs = make_obs()
    outputs = []
    for model in (policy, loaded):
        torch.manual_seed(3)
        outputs.append(model.act(obs))
    a, b = outputs
    assert (
        torch.equal(a.action, b.action)
        and torch.equal(a.log_prob, b.log_prob)
        and torch.equal(a.value, b.value)
    )
    assert torch.equal(loaded.state_std, policy.state_std)

    (tmp_path / TOKENIZER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=TOKENIZER_FILE):
        Policy.from_pretrained(tmp_path)
    policy.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Policy.from_pretrained(tmp_path)


def test_config_make_policy_and_input_errors(tokenizer):
    cfg = from_dict(
        FlowVLAConfig,
        {"vlm": {"image_size": [IMAGE, IMAGE]}, "likelihood": "noise", "stochastic_steps": [0, 3]},
    )
    assert (
        cfg.stochastic_steps == (0, 3)
        and from_dict(FlowVLAConfig, {"stochastic_steps": "all"}).stochastic_steps == "all"
    )
    obs = make_obs()
    policy = make_policy(tiny_config(action_dim=0, state_dim=0), obs, action_dim=ACTIONS)
    assert (policy.config.action_dim, policy.config.state_dim) == (ACTIONS, STATE)

    with pytest.raises(ValueError, match="action_dim"):
        make_policy(tiny_config(action_dim=7, state_dim=0), obs, action_dim=ACTIONS)
    with pytest.raises(ValueError, match="stochastic_steps"):
        FlowVLAPolicy(tiny_config(stochastic_steps=(0, STEPS)), tokenizer)
    wrong_size = dict(
        obs, **{"observation.images.front": torch.zeros(N, 48, 48, 3, dtype=torch.uint8)}
    )
    with pytest.raises(ValueError, match=r"observation\.images\.front"):
        policy.act(wrong_size)
    out = policy.act(obs)
    with pytest.raises(ValueError, match="action_dim=2"):
        policy.evaluate(obs, torch.zeros(N, CHUNK, ACTIONS + 1), out.extras)
    with pytest.raises(ValueError, match="action_dim=2"):
        policy.supervised_loss(obs, torch.zeros(N, CHUNK, 7))
    with pytest.raises(KeyError, match="chain"):
        policy.evaluate(obs, out.action, {})
    with pytest.raises(KeyError, match="task"):
        policy.act({k: v for k, v in obs.items() if k != "task"})


def test_sampling_cost_reports_per_k(tokenizer):
    policy = FlowVLAPolicy(tiny_config(), tokenizer)
    cost = sampling_cost(policy, make_obs(n=2), num_steps=(1, 3), repeats=1)
    assert set(cost["chunk_s"]) == {1, 3} and cost["prefix_s"] > 0 and cost["num_envs"] == 2
