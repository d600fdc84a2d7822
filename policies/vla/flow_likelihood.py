"""The denoising chain of a flow-matching policy and its exact log-likelihood.

Convention (pi0 / openpi): time t runs from 1 (pure Gaussian noise) to 0 (an action), the
interpolant is x_t = t * noise + (1 - t) * action and the network predicts the velocity
v(x_t, t) ~ noise - action. K Euler steps walk the grid t_k = 1 - k/K, k = 0..K, with
step size dt = t_k - t_{k+1} = 1/K:

    ODE step         x_{k+1} = x_k - dt * v(x_k, t_k)                            (deterministic)

For RL (pi_RL, arXiv 2510.25889) a chosen subset of the K steps becomes stochastic: each such
step is a Gaussian x_{k+1} ~ N(mean_k, std_k^2) whose mean and std are functions of x_k only,
so the whole chain x_0 -> x_1 -> ... -> x_K is a Markov chain with an exact density

    log pi(chain) = sum over stochastic steps k of log N(x_{k+1}; mean_k, std_k^2)

(the initial noise x_0 ~ N(0, I) and the deterministic steps do not depend on the policy's
parameters and carry no log-prob). Two ways to make a step stochastic:

Flow-Noise: keep the Euler mean and add learned noise, std_k = noise_net(features of x_k, t_k),
    bounded in [min_std, max_std]:
        mean_k = x_k - dt * v
Flow-SDE (Flow-GRPO, arXiv 2505.05470): the reverse-time SDE with the same marginals as the
    ODE, dx = [v - (sigma_t^2 / 2) * score] dt + sigma_t dW, with the score of the interpolant
    score(x, t) = -(x + (1 - t) v) / t and sigma_t = a * sqrt(t / (1 - t)); at t = 1 the
    denominator uses the next grid point, 1 - t_1 = 1/K (as Flow-GRPO and pi_RL do). Its
    Euler-Maruyama step (dt > 0, walking down in t):
        mean_k = x_k - dt * [v + sigma_t^2 / (2 t) * (x_k + (1 - t) v)]
        std_k  = sigma_t * sqrt(dt)

Everything here is a pure function of tensors, shared by the policy's `act`/`evaluate` and by
the tests' analytic toy problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

# field(x (B, ...), t (B,)) -> velocity (B, ...), learned std (B, ...) or None
VelocityField = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def time_grid(num_steps: int, device: torch.device | None = None) -> torch.Tensor:
    """(K+1,) float32 times 1, 1 - 1/K, ..., 1/K, 0."""
    return torch.linspace(1.0, 0.0, num_steps + 1, device=device)


def sde_sigma(t: torch.Tensor, num_steps: int, noise_level: float) -> torch.Tensor:
    """Flow-GRPO's diffusion coefficient sigma_t = a * sqrt(t / (1 - t)), with 1 - t at t = 1
    replaced by 1/K (the first step would otherwise have infinite noise)."""
    one_minus_t = torch.where(t >= 1.0, torch.full_like(t, 1.0 / num_steps), 1.0 - t)
    return noise_level * torch.sqrt(t / one_minus_t)


def ode_mean(x: torch.Tensor, velocity: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """The Euler step x - dt * v (dt broadcastable to x)."""
    return x - dt * velocity


def sde_mean_std(
    x: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, dt: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of one Euler-Maruyama step of the marginal-preserving SDE (t, dt, sigma
    broadcastable to x)."""
    noise_estimate = x + (1.0 - t) * velocity  # = -t * score(x, t)
    mean = x - dt * (velocity + sigma.square() / (2.0 * t) * noise_estimate)
    std = (sigma * dt.sqrt()).expand_as(mean)
    return mean, std


def step_distribution(
    likelihood: str,
    x: torch.Tensor,
    velocity: torch.Tensor,
    learned_std: torch.Tensor | None,
    t: torch.Tensor,
    dt: torch.Tensor,
    num_steps: int,
    noise_level: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (both shaped like x (B, ...)) of a stochastic denoising step from x at
    times t (B,) with step sizes dt (B,), in mode "noise" (Flow-Noise) or "sde" (Flow-SDE)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    t, dt = t.view(shape), dt.view(shape)
    if likelihood == "noise":
        if learned_std is None:
            raise ValueError("Flow-Noise needs the noise network's std.")
        return ode_mean(x, velocity, dt), learned_std
    if likelihood == "sde":
        return sde_mean_std(x, velocity, t, dt, sde_sigma(t, num_steps, noise_level))
    raise ValueError(f"Unknown likelihood {likelihood!r}; valid: noise, sde.")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2) summed over all dims but the first: (B, ...) -> (B,)."""
    z = (x - mean) / std
    return (-0.5 * z.square() - std.log() - LOG_SQRT_2PI).flatten(1).sum(1)


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Entropy of N(., std^2) summed over all dims but the first: (B, ...) -> (B,)."""
    return (0.5 + LOG_SQRT_2PI + std.log()).flatten(1).sum(1)


def sample_chain(
    field: VelocityField,
    noise: torch.Tensor,
    num_steps: int,
    stochastic: frozenset[int],
    likelihood: str,
    noise_level: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run K denoising steps from `noise` x_0 (B, ...) at t = 1.

    Steps whose index is in `stochastic` sample from their Gaussian and add its log-prob; the
    others are plain Euler steps. Returns the chain (B, K+1, ...) (chain[:, 0] = noise,
    chain[:, K] = the sample) and the chain's log-prob (B,).
    """
    grid = time_grid(num_steps, noise.device)
    batch = noise.shape[0]
    x = noise
    chain = [x]
    log_prob = torch.zeros(batch, device=noise.device)
    for k in range(num_steps):
        t = grid[k].expand(batch)
        dt = (grid[k] - grid[k + 1]).expand(batch)
        velocity, learned_std = field(x, t)
        if k in stochastic:
            mean, std = step_distribution(
                likelihood, x, velocity, learned_std, t, dt, num_steps, noise_level
            )
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            x = mean + std * eps
            log_prob = log_prob + gaussian_log_prob(x, mean, std)
        else:
            x = ode_mean(x, velocity, dt.view((-1,) + (1,) * (x.dim() - 1)))
        chain.append(x)
    return torch.stack(chain, dim=1), log_prob


def chain_log_prob(
    field: VelocityField,
    chain: torch.Tensor,
    num_steps: int,
    stochastic: frozenset[int],
    likelihood: str,
    noise_level: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute the log-prob of a stored chain (B, K+1, ...) per element (B, ...) (summed over
    the stochastic steps; its total over elements is the chain's log-prob) and the entropy (B,).

    All stochastic steps go through `field` as one batch of B * |stochastic| inputs; the
    deterministic steps are not recomputed (they carry no log-prob).
    """
    batch = chain.shape[0]
    if not stochastic:
        return torch.zeros_like(chain[:, 0]), torch.zeros(batch, device=chain.device)
    steps = torch.tensor(sorted(stochastic), device=chain.device)
    grid = time_grid(num_steps, chain.device)
    x = chain[:, steps].flatten(0, 1)  # (B * S, ...), env-major
    x_next = chain[:, steps + 1].flatten(0, 1)
    t = grid[steps].repeat(batch)
    dt = (grid[steps] - grid[steps + 1]).repeat(batch)
    velocity, learned_std = field(x, t)
    mean, std = step_distribution(
        likelihood, x, velocity, learned_std, t, dt, num_steps, noise_level
    )
    z = (x_next - mean) / std
    elements = -0.5 * z.square() - std.log() - LOG_SQRT_2PI  # (B * S, ...)
    log_prob = elements.view(batch, len(steps), *chain.shape[2:]).sum(1)
    entropy = gaussian_entropy(std).view(batch, -1).sum(1)
    return log_prob, entropy
