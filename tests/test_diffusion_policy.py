"""Diffusion Policy (policies/diffusion.py): every diffusers scheduler reproduces a bimodal
demonstrator mode by mode, save/load keeps samples, errors name the problem, SFT trains it."""

import pytest
import torch

from embodied.config import load_config
from policies import make_policy
from policies.base import Policy
from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from policies.mlp import MLPPolicy, MLPPolicyConfig

OFFSET = 0.6  # the two modes of the toy demonstrator: 0.2 s +- OFFSET


def toy_batch(n: int, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """State s ~ U[-1, 1] (N, 1); a chunk (N, T=2, A=2) whose first action is 0.2 s + m OFFSET
    in both dimensions, m = +-1 with equal odds, and whose second action is half the first."""
    s = torch.rand(n, 1, generator=generator) * 2 - 1
    mode = torch.randint(2, (n, 1), generator=generator).float() * 2 - 1
    first = (0.2 * s + OFFSET * mode).expand(n, 2)
    return {"observation.state": s}, torch.stack([first, 0.5 * first], dim=1)


def toy_config(**overrides) -> DiffusionPolicyConfig:
    base = dict(state_keys=("observation.state",), state_dim=1, action_dim=2, chunk_size=2, hidden_dim=64,
                num_blocks=2, timestep_embed_dim=32, normalize_state=False)
    return DiffusionPolicyConfig(**{**base, **overrides})


def fit(policy: Policy, updates: int = 250, seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(updates):
        loss, _ = policy.supervised_loss(*toy_batch(128, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


def mode_fractions(chunk: torch.Tensor, s: torch.Tensor) -> dict[str, float]:
    """Where first actions (N, 2) fall relative to the modes at states s (N, 1)."""
    offset = chunk[:, 0] - 0.2 * s  # (N, 2)
    return {
        "upper": float(((offset - OFFSET).abs() < 0.15).all(1).float().mean()),
        "lower": float(((offset + OFFSET).abs() < 0.15).all(1).float().mean()),
        "between": float((offset.abs() < 0.3).any(1).float().mean()),
        "coherent": float(((chunk[:, 1] - 0.5 * chunk[:, 0]).abs() < 0.1).all(1).float().mean()),
    }


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The toy fits are tiny: on 2 shared cores two threads ran them ~30x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def states() -> torch.Tensor:
    return torch.tensor([[-0.5], [0.0], [0.5]]).repeat_interleave(200, 0)


@pytest.mark.parametrize(("scheduler", "prediction_type", "inference_steps"), [
    ("ddpm", "epsilon", 20), ("ddim", "epsilon", 10), ("ddim", "sample", 10), ("flow_euler", "epsilon", 10),
])
def test_each_scheduler_reproduces_both_modes(scheduler, prediction_type, inference_steps, states):
    policy = fit(DiffusionPolicy(toy_config(scheduler=scheduler, prediction_type=prediction_type,
                                            num_inference_steps=inference_steps)))
    torch.manual_seed(1)
    out = policy.act({"observation.state": states})
    assert out.action.shape == (600, 2, 2) and out.value is None
    assert torch.equal(out.log_prob, torch.zeros(600))
    assert out.action.abs().max() <= 1.0
    share = mode_fractions(out.action, states)
    assert share["upper"] > 0.25 and share["lower"] > 0.25, share  # both modes, roughly half each
    assert share["upper"] + share["lower"] > 0.75, share
    assert share["between"] < 0.15, share  # not the average of the modes
    assert share["coherent"] > 0.85, share  # the chunk's steps come from one mode together


def test_an_mse_policy_averages_the_modes_the_toy_problem_tells_them_apart(states):
    policy = fit(MLPPolicy(MLPPolicyConfig(obs_dim=1, action_dim=2, chunk_size=2, hidden_sizes=(64, 64),
                                           normalize_obs=False, obs_keys=("observation.state",))))
    share = mode_fractions(policy.act({"observation.state": states}, deterministic=True).action, states)
    assert share["between"] > 0.9 and share["upper"] + share["lower"] < 0.1, share


def test_flow_forward_process_is_the_schedulers():
    """supervised_loss builds x_s = s eps + (1 - s) x_0 itself (vectorised); it must equal diffusers'
    FlowMatchEulerDiscreteScheduler.scale_noise at the same timesteps."""
    policy = DiffusionPolicy(toy_config(scheduler="flow_euler"))
    scheduler = policy.train_scheduler
    index = torch.tensor([0, 17, 99])
    x0, noise = torch.rand(3, 2, 2), torch.randn(3, 2, 2)
    sigma = scheduler.sigmas[index][:, None, None]
    ours = sigma * noise + (1 - sigma) * x0
    assert torch.allclose(ours, scheduler.scale_noise(x0, scheduler.timesteps[index], noise), atol=1e-6)


def test_sampling_does_not_move_the_training_schedule():
    policy = DiffusionPolicy(toy_config(scheduler="flow_euler", num_inference_steps=4))
    sigmas = policy.train_scheduler.sigmas.clone()
    policy.act({"observation.state": torch.zeros(2, 1)})
    assert torch.equal(policy.train_scheduler.sigmas, sigmas) and len(sigmas) == 100


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "flow_euler"])
def test_save_load_round_trips_config_and_samples(tmp_path, scheduler):
    config = toy_config(scheduler=scheduler, num_train_timesteps=50, num_inference_steps=5, prediction_type="sample",
                        normalize_state=True)
    policy = DiffusionPolicy(config)
    policy.set_normalization({"observation.state": (torch.tensor([0.3]), torch.tensor([2.0]))})
    policy.save_pretrained(tmp_path / "p")
    loaded = Policy.from_pretrained(tmp_path / "p")
    assert isinstance(loaded, DiffusionPolicy) and loaded.config == config
    assert torch.equal(loaded.normalizer.mean, torch.tensor([0.3]))
    obs = {"observation.state": torch.linspace(-1, 1, 8)[:, None]}
    torch.manual_seed(3)
    first = policy.act(obs).action
    torch.manual_seed(3)
    assert torch.equal(loaded.act(obs).action, first), "same weights, same seed: the same chunks"
    torch.manual_seed(4)
    assert not torch.equal(loaded.act(obs).action, first), "another seed: other chunks"
    assert torch.equal(loaded.act(obs, deterministic=True).action, policy.act(obs, deterministic=True).action)


def test_images_condition_the_denoiser_through_the_cnn_encoder():
    policy = DiffusionPolicy(toy_config(cameras=("front",), image_size=(32, 32), channels=(8,), kernel_sizes=(4,),
                                        strides=(4,), image_feature_dim=16))
    obs = {"observation.state": torch.zeros(3, 1), "observation.images.front": torch.zeros(3, 32, 32, 3, dtype=torch.uint8)}
    assert policy.features(obs).shape == (3, 16 + 1)
    loss, metrics = policy.supervised_loss(obs, torch.zeros(3, 2, 2))
    loss.backward()
    assert policy.encoder.project[0].weight.grad.abs().sum() > 0 and "denoise_mse" in metrics
    spec = policy.feature_spec()
    assert spec.images == {"observation.images.front": (32, 32)} and spec.vectors == ("observation.state",)
    assert (spec.vector_dim, spec.action_dim, spec.chunk_size) == (1, 2, 2)


def test_errors_name_the_problem():
    policy = DiffusionPolicy(toy_config())
    with pytest.raises(NotImplementedError, match="no tractable log-probability.*residual RL"):
        policy.evaluate({"observation.state": torch.zeros(2, 1)}, torch.zeros(2, 2, 2), {})
    with pytest.raises(ValueError, match=r"actions are \(4, 3, 2\); this policy models chunks \(N, 2, 2\)"):
        policy.supervised_loss({"observation.state": torch.zeros(4, 1)}, torch.zeros(4, 3, 2))
    with pytest.raises(ValueError, match="observation.state has 3 features; this policy was built for 1"):
        policy.act({"observation.state": torch.zeros(2, 3)})
    with pytest.raises(KeyError, match="observation.state"):
        policy.act({"observation.environment_state": torch.zeros(2, 1)})
    with pytest.raises(KeyError, match="observation.images.wrist"):
        DiffusionPolicy(toy_config(cameras=("wrist",), image_size=(32, 32))).act({"observation.state": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match=r"observation.images.front is \(16, 16\); this policy expects \(32, 32\)"):
        DiffusionPolicy(toy_config(cameras=("front",), image_size=(32, 32))).act(
            {"observation.state": torch.zeros(1, 1), "observation.images.front": torch.zeros(1, 16, 16, 3, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="Unknown scheduler 'euler'; valid: ddpm, ddim, flow_euler"):
        DiffusionPolicy(toy_config(scheduler="euler"))
    with pytest.raises(ValueError, match="num_inference_steps must be in"):
        DiffusionPolicy(toy_config(num_inference_steps=101))
    with pytest.raises(ValueError, match="needs something to condition on"):
        DiffusionPolicy(toy_config(state_keys=(), state_dim=0))
    with pytest.raises(ValueError, match="need state_dim > 0"):
        DiffusionPolicy(toy_config(state_dim=0))
    with pytest.raises(ValueError, match="policy.kind: unknown 'difusion'. Did you mean 'diffusion'"):
        load_config_of_kind("difusion")


def load_config_of_kind(kind: str):
    from embodied.runner.trainer import TrainConfig

    return load_config(TrainConfig, "configs/sft_pickcube_diffusion.yaml", [f"policy.kind={kind}"])


def test_make_policy_reads_sizes_off_the_observation():
    config = load_config_of_kind("diffusion").policy
    obs = {"observation.state": torch.zeros(2, 25), "observation.environment_state": torch.zeros(2, 10)}
    policy = make_policy(config, obs, action_dim=7)
    assert isinstance(policy, DiffusionPolicy)
    assert (policy.config.state_dim, policy.config.action_dim, policy.chunk_size) == (35, 7, 4)
    assert policy.act(obs).action.shape == (2, 4, 7)


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory):
    from embodied.data.record import RecordConfig, record

    root = tmp_path_factory.mktemp("data") / "reach"
    record(RecordConfig(task="Reach", episodes=4, root=str(root), num_envs=4, image_size=16, cameras=("front",),
                        video=False), progress=False)
    return root


def test_sft_trains_it_on_recorded_demos(reach_demos, tmp_path, monkeypatch):
    from embodied.runner.trainer import TrainConfig, Trainer

    cfg = load_config(TrainConfig, "configs/sft_pickcube_diffusion.yaml", [
        "env.task=Reach", f"algo.dataset={reach_demos}", f"run_dir={tmp_path / 'run'}", "algo.total_updates=4",
        "algo.updates_per_iteration=2", "algo.batch_size=16", "algo.warmup_updates=1", "eval.every=0",
        "eval.episodes=2", "log.final_video=false", "log.progress_bar=false", "log.tensorboard=false",
        "policy.hidden_dim=32", "policy.num_blocks=1", "policy.num_inference_steps=2", "env.num_envs=2",
    ])
    trainer = Trainer(cfg)
    policy = trainer.policy
    assert isinstance(policy, DiffusionPolicy)
    mean, _ = trainer.algo.dataset.statistics("observation.state")
    assert torch.allclose(policy.normalizer.mean[:25], mean), "the dataset's statistics are frozen into the policy"
    weights = policy.denoiser.output[-1].weight.detach().clone()
    final = trainer.train()
    assert trainer.algo.updates == 4 and not torch.equal(policy.denoiser.output[-1].weight, weights)
    assert final["episodes"] == 2 and (tmp_path / "run" / "eval.json").is_file()
