"""Offline-to-online: IQL and Cal-QL losses against hand-computed values on tiny batches,
returns-to-go against a loop, and a short offline-then-online run of each method and mode."""

import math

import pytest
import torch

from embodied.algos import calql, iql, parl
from embodied.config import load_config
from embodied.data.record import RecordConfig, record
from embodied.data.replay import ReplayBuffer, returns_to_go
from embodied.runner.trainer import TrainConfig, Trainer


def test_iql_losses_match_hand_computed_values():
    assert iql.expectile_loss(torch.tensor([1.0, -2.0]), 0.8).item() == pytest.approx((0.8 * 1 + 0.2 * 4) / 2)
    assert iql.value_loss(torch.tensor([3.0]), torch.tensor([1.0]), 0.9).item() == pytest.approx(0.9 * 4)
    q = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # (E=2, B=2)
    loss = iql.critic_loss(q, torch.tensor([0.5, 1.0]), torch.tensor([0.9, 0.0]), torch.tensor([1.0, 3.0]))
    # targets 1.4 and 1.0: member 0 (0.16 + 1) / 2, member 1 (1.96 + 0) / 2
    assert loss.item() == pytest.approx(0.58 + 0.98)
    weights = iql.awr_weights(torch.tensor([1.1, 5.0]), torch.tensor([1.0, 3.0]), beta=3.0)
    assert torch.allclose(weights, torch.tensor([math.exp(0.3), 100.0]))
    actor = iql.actor_loss(torch.tensor([-1.0, -2.0]), weights)
    assert actor.item() == pytest.approx((math.exp(0.3) * 1 + 100 * 2) / 2)


def test_calql_losses_match_hand_computed_values():
    q_data = torch.tensor([[1.0]])  # (E=1, B=1)
    q_uniform = torch.tensor([[[0.5]]])  # (E, B, K=1)
    q_policy = torch.tensor([[[0.2]]])
    log_prob = torch.tensor([[-1.0]])
    action_dim = 2
    log_uniform = -2 * math.log(2)
    # calibrated: max(0.2, 0.7) = 0.7
    calibrated = calql.conservative_regulariser(q_data, q_uniform, q_policy, log_prob, torch.tensor([0.7]), action_dim)
    expected = math.log(math.exp(0.5 - log_uniform) + math.exp(0.7 + 1.0)) - 1.0
    assert calibrated.item() == pytest.approx(expected, abs=1e-6)
    # no reference value (online rows): plain CQL(H)
    plain = calql.conservative_regulariser(q_data, q_uniform, q_policy, log_prob, torch.tensor([float("-inf")]), action_dim)
    assert plain.item() == pytest.approx(math.log(math.exp(0.5 - log_uniform) + math.exp(0.2 + 1.0)) - 1.0, abs=1e-6)
    target = torch.tensor([0.4])
    loss, stats = calql.critic_loss(q_data, target, q_uniform, q_policy, log_prob, torch.tensor([0.7]), action_dim, alpha=0.5)
    assert stats["td_loss"].item() == pytest.approx(0.36)
    assert loss.item() == pytest.approx(0.36 + 0.5 * expected, abs=1e-6)
    only_td, stats = calql.critic_loss(q_data, target, q_uniform, q_policy, log_prob, torch.tensor([0.7]), action_dim, alpha=0.0)
    assert only_td.item() == pytest.approx(0.36) and "cql_loss" not in stats
    actor = calql.actor_loss(torch.tensor([-1.0, 0.0]), torch.tensor([[1.0, 2.0], [0.5, 3.0]]), entropy_coef=0.1)
    assert actor.item() == pytest.approx(((-0.1 - 0.5) + (0.0 - 2.0)) / 2)
    warmup = calql.bc_actor_loss(torch.tensor([-1.0, 0.0]), torch.tensor([-2.0, -0.5]), entropy_coef=0.1)
    assert warmup.item() == pytest.approx(((-0.1 + 2.0) + (0.0 + 0.5)) / 2)


def test_returns_to_go_match_a_loop():
    buffer = ReplayBuffer(10, 2, {"x": (1,)}, 1)
    rewards = torch.rand(7, 2, generator=torch.Generator().manual_seed(0))
    done = torch.zeros(7, 2, dtype=torch.bool)
    done[2, 0] = done[6, 0] = done[4, 1] = True
    for t in range(7):
        buffer.add({"x": torch.zeros(2, 1)}, torch.zeros(2, 1), rewards[t], done[t], torch.zeros(2, dtype=torch.bool),
                   {"x": torch.zeros(2, 1)})
    result = returns_to_go(buffer, 0.9)
    for env in range(2):
        for t in range(7):
            expected, discount = 0.0, 1.0
            for k in range(t, 7):
                expected += discount * rewards[k, env].item()
                discount *= 0.9
                if done[k, env]:
                    break
            assert result[t, env].item() == pytest.approx(expected, abs=1e-5)


@pytest.fixture(scope="module")
def mixed_reach(tmp_path_factory):
    """Expert and noisy Reach demos, failures kept (a mixed-quality dataset with rewards)."""
    root = tmp_path_factory.mktemp("o2o") / "reach_mixed"
    record(RecordConfig(task="Reach", episodes=6, root=str(root), num_envs=6, cameras=("front",), image_size=16,
                        video=False, noise=0.5, keep_failures=True), progress=False)
    return root


def test_parl_keeps_the_best_sample_and_refines_it_uphill_on_q():
    target = torch.tensor([0.3, -0.2])

    def q_function(features, action):  # two members, the min is the second
        q = -(action - target).pow(2).sum(1)
        return torch.stack([q + 1.0, q])

    g = torch.Generator().manual_seed(0)
    candidates = torch.rand(5, 8, 2, generator=g) * 2 - 1
    sampled_q = -(candidates - target).pow(2).sum(2)
    chosen, stats = parl.improve_actions(q_function, torch.zeros(5, 3), candidates, keep=2, steps=0)
    assert torch.equal(chosen, candidates[torch.arange(5), sampled_q.argmax(1)]), "no steps: the best sample"
    refined, stats = parl.improve_actions(q_function, torch.zeros(5, 3), candidates, keep=2, steps=10, step_size=0.1)
    # gradient ascent on -(a - t)^2 with step 0.1 shrinks the distance by 0.8 per step
    assert torch.all(-(refined - target).pow(2).sum(1) >= sampled_q.max(1).values - 1e-6)
    assert stats["q_improved"] > stats["q_sampled_best"]


@pytest.mark.parametrize(("method", "mode", "actor"), [
    ("calql", "wsrl", "native"),
    pytest.param("iql", "rlpd", "native", marks=pytest.mark.slow),
    pytest.param("calql", "rlpd", "parl", marks=pytest.mark.slow),
])
def test_offline_then_online_runs_through_the_trainer(tmp_path, mixed_reach, method, mode, actor):
    cfg = load_config(TrainConfig, None, [
        f"run_dir={tmp_path / method}", "total_env_steps=320", "torch_threads=1",
        "env.task=Reach", "env.num_envs=8", "env.obs_mode=state", "env.reward_mode=sparse",
        "policy.kind=mlp", "policy.hidden_sizes=[32, 32]",
        "algo.name=o2o", f"algo.method={method}", f"algo.online_mode={mode}", f"algo.dataset={mixed_reach}",
        "algo.offline_updates=30", "algo.updates_per_iteration=10", "algo.batch_size=32", "algo.buffer_steps=100",
        "algo.critic_hidden_sizes=[32, 32]", "algo.steps_per_iteration=10", "algo.updates_per_step=1",
        "algo.wsrl_warmup_steps=10", "algo.cql_samples=2", f"algo.actor_update={actor}", "algo.parl_samples=4",
        "eval.every=0", "eval.episodes=8", "checkpoint.every=0",
    ])
    trainer = Trainer(cfg)
    result = trainer.train()
    algo = trainer.algo
    assert trainer.env_steps == 320 and 0.0 <= result["success_rate"] <= 1.0
    warm = 10 if mode == "wsrl" else 0  # wsrl: the first online iteration only collects
    assert algo.updates == 30 + (40 - warm)
    assert len(algo.buffer) == 320
    lines = (tmp_path / method / "metrics.jsonl").read_text().splitlines()
    assert sum('"train/offline": 1.0' in line for line in lines) == 2  # the offline iterations log as such


def test_warm_up_phases_and_reward_scale(tmp_path, mixed_reach):
    """critic_warmup_updates leave the policy untouched; bc_updates clone the dataset's actions
    (the actor's likelihood of them rises); reward_scale multiplies every reward a batch carries."""
    def algo_with(*overrides):
        cfg = load_config(TrainConfig, None, [
            f"run_dir={tmp_path}", "torch_threads=1", "env.task=Reach", "env.num_envs=2", "env.obs_mode=state",
            "policy.kind=mlp", "policy.hidden_sizes=[32, 32]", "algo.name=o2o", f"algo.dataset={mixed_reach}",
            "algo.offline_updates=100", "algo.updates_per_iteration=20", "algo.batch_size=64",
            "algo.critic_hidden_sizes=[32, 32]", "algo.cql_samples=2", *overrides])
        return Trainer(cfg).algo

    algo = algo_with("algo.critic_warmup_updates=20")
    policy_before = {k: v.clone() for k, v in algo.policy.state_dict().items()}
    critic_before = {k: v.clone() for k, v in algo.critic.state_dict().items()}
    algo.update({}, 0)
    assert algo.updates == 20
    assert all(torch.equal(v, algo.policy.state_dict()[k]) for k, v in policy_before.items())
    assert not all(torch.equal(v, algo.critic.state_dict()[k]) for k, v in critic_before.items())

    algo = algo_with("algo.bc_updates=100", "algo.lr=1e-3")
    torch.manual_seed(0)
    batch = algo.offline.sample(256, 1, 0.97, torch.Generator().manual_seed(1))

    def data_log_likelihood() -> float:
        with torch.no_grad():
            features = algo.policy.features(batch["obs"])
            return algo.policy.distribution(features).log_prob(batch["action"].clamp(-1, 1)).sum(-1).mean().item()

    before = data_log_likelihood()
    for iteration in range(3):
        algo.update({}, iteration)
    assert data_log_likelihood() > before + 1.0

    plain, scaled = algo_with(), algo_with("algo.reward_scale=10")
    plain.generator.manual_seed(2)
    scaled.generator.manual_seed(2)
    a, b = plain.sample(), scaled.sample()
    assert a["n_step_reward"].sum() > 0
    assert torch.allclose(b["n_step_reward"], 10 * a["n_step_reward"])
    assert torch.allclose(b["return_to_go"], 10 * a["return_to_go"])
