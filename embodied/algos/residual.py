"""Residual off-policy RL on a frozen base policy: TD3 (or SAC by `actor: sac`).

The policy is a `ResidualPolicy` (policies/residual.py): a = base(s) + scale * tanh(pi(s, base(s))),
the actor's last layer zero so that it starts as the base. Below s is the policy's state (the
features, and the base action and chunk phase when the base follows its chunks). The base's
action at every stored state and next state is recorded in the replay buffer
(`residual.base_action`, `residual.phase`): it depends on where the base is in its chunk,
which the observation does not say, and the base is not run again in the updates. The
demo/offline dataset gets the same fields, as if the base had followed its chunks from each
episode's first frame. One iteration, top to bottom:

  1. collect `steps_per_iteration` batched env steps into the replay buffer. For the first
     `warmup_steps` the actions are the base's plus Gaussian noise of `warmup_noise` (the
     buffer starts near the base's behaviour, not from a random residual); after that, the
     residual policy with its exploration noise (TD3) or its sampled correction (SAC);
  2. `updates_per_step` gradient updates per batched env step (the update-to-data ratio),
     each on a batch drawn `offline_fraction` from a demo/offline LeRobot dataset and the
     rest from the online buffer (`demo_dataset`, RLPD's symmetric sampling), with n-step
     returns R = sum_k gamma^k r_{t+k};
       critic (E LayerNorm members):  y = R + gamma^m (1 - term) * min_{pair}(Q'_i, Q'_j)(s', a')
                                      [- alpha * log pi(a'|s') for SAC]
                                      with a' = base(s') + clip(residual'(s') + clip(noise)) (TD3's
                                      target smoothing; the pair {i, j} drawn at random per update)
                                      L_Q = sum_e mean (Q_e(s, a) - y)^2
       actor (every `actor_delay` updates, after `critic_warmup_updates` critic-only updates):
                                      L_pi = -mean_e Q_e(s, base(s) + residual(s))  [+ alpha log pi]
                                      with `residual_penalty` = lambda > 0 (TD3+BC's form, the base as
                                      the behaviour to stay near):
                                      L_pi = -mean Q / mean|Q| + lambda * mean (residual / scale)^2
       targets:                       Polyak averaging with `tau`.

Rewards are whatever the env returns; the recipes use `env.reward_mode: sparse` (1 on success,
episodes end there).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import torch

from embodied.algos.base import AlgoConfig, Algorithm, register_algo
from embodied.algos.offpolicy import QEnsemble, collect_steps, pair_min, polyak
from embodied.data.replay import ReplayBuffer, from_lerobot, sample_mixed
from embodied.runner.rollout import ChunkRunner
from policies.residual import ResidualPolicy

BASE_ACTION = "residual.base_action"  # replay fields: the base's action at the state (N, A)
PHASE = "residual.phase"  # and its index in the base's chunk (N, 1)


@dataclasses.dataclass
class ResidualConfig(AlgoConfig):
    name: str = "residual"
    actor: Literal["td3", "sac"] = "td3"  # sac needs policy.stochastic: true
    lr: float = 3e-4  # actor
    critic_lr: float = 3e-4
    gamma: float = 0.97
    n_step: int = 3
    tau: float = 0.005
    batch_size: int = 256
    buffer_steps: int = 20_000  # batched env steps the online buffer holds (x num_envs transitions)
    steps_per_iteration: int = 16  # batched env steps between updates/logs
    updates_per_step: float = 1.0  # gradient updates per batched env step (update-to-data ratio x num_envs)
    warmup_steps: int = 100  # batched env steps with base + noise before any update
    warmup_noise: float = 0.05
    critic_warmup_updates: int = 1000  # critic-only updates before the actor trains
    num_critics: int = 2
    critic_hidden_sizes: tuple[int, ...] = (256, 256)
    actor_delay: int = 2  # TD3's delayed policy updates
    residual_penalty: float = 0.0  # weight of mean (residual / scale)^2 in L_pi, against Q normalised by its mean |Q|
    target_noise: float = 0.1  # TD3 target smoothing, as a fraction of policy.scale
    target_noise_clip: float = 0.25  # likewise
    init_alpha: float = 0.01  # SAC entropy temperature (tuned towards target_entropy)
    target_entropy: float | None = None  # default: -action_dim
    reward_scale: float = 1.0
    demo_dataset: str = ""  # a LeRobot dataset with rewards, sampled alongside the online buffer
    demo_reward: Literal["dataset", "success"] = "success"  # success: relabel as sparse 0/1 from next.success
    offline_fraction: float = 0.5
    max_grad_norm: float = 10.0


@register_algo
class Residual(Algorithm[ResidualConfig]):
    config_class = ResidualConfig
    policy: ResidualPolicy

    def __init__(self, policy: ResidualPolicy, cfg: ResidualConfig):
        super().__init__(policy, cfg)
        if not isinstance(policy, ResidualPolicy):
            raise ValueError(f"algo residual trains a residual policy (policy.kind: residual); got {policy.kind!r}.")
        if (cfg.actor == "sac") != policy.config.stochastic:
            raise ValueError(f"algo.actor {cfg.actor} needs policy.stochastic: {cfg.actor == 'sac'}.")
        action_dim = policy.config.action_dim
        self.critic = QEnsemble(policy.state_dim, action_dim, cfg.num_critics, tuple(cfg.critic_hidden_sizes))
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_actor = copy.deepcopy(policy.actor).requires_grad_(False)
        self.optimizer = torch.optim.Adam(policy.actor.parameters(), lr=cfg.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.log_alpha = torch.tensor(float(torch.tensor(cfg.init_alpha).log()), requires_grad=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -float(action_dim)
        self.obs_keys = tuple(policy.feature_spec().vectors) or tuple(policy.config.obs_keys)
        self.buffer: ReplayBuffer | None = None  # built at the first collect (shapes from the env)
        self.offline = from_lerobot(cfg.demo_dataset, self.obs_keys, reward=cfg.demo_reward) if cfg.demo_dataset else None
        if self.offline is not None:
            add_base_actions(self.offline, policy)
        self.runner: ChunkRunner | None = None  # follows the base's chunks in the training envs
        self.env_steps = 0  # batched steps taken
        self.pending_updates = 0.0

    # ------------------------------------------------------------------ collection
    def collect(self, env, obs, tracker) -> tuple[dict[str, Any], Any, None]:
        cfg = self.cfg
        policy: ResidualPolicy = self.policy
        if self.buffer is None:
            shapes = {k: tuple(obs[k].shape[1:]) for k in self.obs_keys} | {BASE_ACTION: (env.action_dim,), PHASE: (1,)}
            self.buffer = ReplayBuffer(cfg.buffer_steps, env.num_envs, shapes, env.action_dim, env.device)
        if self.runner is None or self.runner.num_envs != env.num_envs:
            self.runner = policy.base_runner(env.num_envs)
        runner, buffer = self.runner, self.buffer
        now: dict[str, torch.Tensor] = {}

        def choose(o: dict[str, Any]) -> torch.Tensor:
            base, phase = runner.current(o)
            now.update({BASE_ACTION: base, PHASE: phase[:, None].float()})
            if self.env_steps < cfg.warmup_steps:
                noise = cfg.warmup_noise * torch.randn(base.shape, generator=self.generator).to(base) * policy.corrected
                action = (base + noise).clamp(-1, 1)
            else:
                action, _ = policy.correct(policy.state(o, base, phase), base, deterministic=False)
            self.env_steps += 1
            return action

        def annotate(following: dict[str, Any], done: torch.Tensor) -> tuple[dict, dict]:
            runner.advance(done)  # an ended episode's final observation gets a fresh chunk ...
            base, phase = runner.current(following)
            runner.ended(done)  # ... and so does the next episode's first
            return dict(now), {BASE_ACTION: base, PHASE: phase[:, None].float()}

        obs = collect_steps(env, obs, cfg.steps_per_iteration, choose, buffer, tracker, cfg.reward_scale,
                            annotate=annotate)
        return {"env_steps": cfg.steps_per_iteration * env.num_envs}, obs, None

    # ------------------------------------------------------------------ losses
    def context(self, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(state, base action) of a replay batch's observations, from the recorded base action."""
        base = obs[BASE_ACTION]
        return self.policy.state(obs, base, obs[PHASE][:, 0]), base

    def _target_action(self, state: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        policy: ResidualPolicy = self.policy
        scale = policy.config.scale
        if self.cfg.actor == "sac":
            residual, log_prob = policy.residual(state, base)
            return policy.combine(base, residual), log_prob
        residual, log_prob = policy.residual(state, base, actor=self.target_actor)
        noise = torch.randn(residual.shape, generator=self.generator).to(residual) * self.cfg.target_noise * scale
        noise = noise.clamp(-self.cfg.target_noise_clip * scale, self.cfg.target_noise_clip * scale) * policy.corrected
        return policy.combine(base, (residual + noise).clamp(-scale, scale)), log_prob

    def critic_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_Q of one batch (see the module docstring) and its statistics."""
        with torch.no_grad():
            next_state, next_base = self.context(batch["next_obs"])
            next_action, next_log_prob = self._target_action(next_state, next_base)
            next_q = pair_min(self.target_critic(next_state, next_action), self.generator)
            if self.cfg.actor == "sac":
                next_q = next_q - self.log_alpha.exp() * next_log_prob
            target = batch["n_step_reward"] + batch["discount"] * next_q
        q = self.critic(self.context(batch["obs"])[0], batch["action"])
        loss = (q - target[None]).pow(2).mean(1).sum()
        return loss, {"critic_loss": loss.detach(), "q": q.mean().detach(), "target_q": target.mean()}

    def actor_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_pi of one batch: -mean_e Q_e(s, base + residual) (+ alpha log pi for SAC)."""
        policy: ResidualPolicy = self.policy
        state, base = self.context(batch["obs"])
        residual, log_prob = policy.residual(state, base)
        q = self.critic(state, policy.combine(base, residual)).mean(0)
        loss = -q.mean()
        stats = {"actor_q": q.mean().detach(), "residual_abs": residual.abs().mean().detach()}
        if self.cfg.residual_penalty > 0:
            size = (residual / policy.config.scale).pow(2)[:, policy.corrected > 0].mean()
            loss = loss / q.abs().mean().detach().clamp_min(1e-6) + self.cfg.residual_penalty * size
            stats["residual_size"] = size.detach()
        if self.cfg.actor == "sac":
            loss = loss + (self.log_alpha.exp().detach() * log_prob).mean()
            stats["log_prob"] = log_prob.mean().detach()
        return loss, stats

    # ------------------------------------------------------------------ update
    def update(self, batch: dict[str, Any], iteration: int) -> dict[str, float]:
        cfg, buffer = self.cfg, self.buffer
        if buffer is None:
            raise RuntimeError("Residual.update before the first collect: the replay buffer is built there.")
        if self.env_steps < cfg.warmup_steps:
            return {"buffer": float(len(buffer)), "updates": float(self.updates)}
        self.pending_updates += cfg.updates_per_step * cfg.steps_per_iteration
        totals: dict[str, float] = {}
        count = 0
        self.policy.train()
        while self.pending_updates >= 1:
            self.pending_updates -= 1
            sample = sample_mixed(buffer, self.offline, cfg.batch_size, cfg.offline_fraction, cfg.n_step, cfg.gamma,
                                  self.generator)
            loss, stats = self.critic_loss(sample)
            self.check_finite(loss, stats, iteration)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
            self.critic_optimizer.step()
            self.updates += 1
            if self.updates > cfg.critic_warmup_updates and self.updates % cfg.actor_delay == 0:
                actor_loss, actor_stats = self.actor_loss(sample)
                self.check_finite(actor_loss, actor_stats, iteration)
                self.optimizer.zero_grad(set_to_none=True)
                actor_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.actor.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                stats = {**stats, **actor_stats, "actor_loss": actor_loss.detach()}
                if cfg.actor == "sac":
                    alpha_loss = -(self.log_alpha * (actor_stats["log_prob"] + self.target_entropy)).mean()
                    self.alpha_optimizer.zero_grad(set_to_none=True)
                    alpha_loss.backward()
                    self.alpha_optimizer.step()
                    stats["alpha"] = self.log_alpha.exp().detach()
                polyak(self.target_actor, self.policy.actor, cfg.tau)
            polyak(self.target_critic, self.critic, cfg.tau)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            count += 1
        self.policy.eval()
        metrics = {k: v / max(count, 1) for k, v in totals.items()}
        return {**metrics, "buffer": float(len(buffer)), "updates": float(self.updates)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(), "critic": self.critic.state_dict(), "target_critic": self.target_critic.state_dict(),
            "target_actor": self.target_actor.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(), "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "buffer_shapes": (self.buffer.obs_shapes, self.buffer.num_envs, self.buffer.action_dim) if self.buffer else None,
            "env_steps": self.env_steps, "updates": self.updates, "pending_updates": self.pending_updates,
            "runner": self.runner.state_dict() if self.runner is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.target_actor.load_state_dict(state["target_actor"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if state["buffer"] is not None:
            shapes, num_envs, action_dim = state["buffer_shapes"]
            self.buffer = ReplayBuffer(self.cfg.buffer_steps, num_envs, shapes, action_dim)
            self.buffer.load_state_dict(state["buffer"])
        self.env_steps, self.updates, self.pending_updates = state["env_steps"], state["updates"], state["pending_updates"]
        if state.get("runner") is not None:
            self.runner = self.policy.base_runner(len(state["runner"]["index"]))
            self.runner.load_state_dict(state["runner"])


@torch.no_grad()
def add_base_actions(buffer: ReplayBuffer, policy: ResidualPolicy, batch_size: int = 1024) -> None:
    """Record the frozen base's action and chunk phase at every state and next state of a
    one-column buffer of whole episodes laid end to end (a dataset's): the base follows its
    chunks from each episode's first frame, `base_horizon` actions of each."""
    if buffer.num_envs != 1 or buffer.steps != buffer.capacity or buffer.pos != 0:
        raise ValueError("add_base_actions reads a full one-column buffer of episodes in order (a dataset's).")
    steps, horizon = buffer.steps, policy.config.base_horizon
    done = buffer.done[:, 0].cpu()
    first = torch.ones(steps, dtype=torch.bool)
    first[1:] = done[:-1]
    frame = torch.arange(steps)
    step_in_episode = frame - torch.cummax(torch.where(first, frame, 0), 0).values
    phase = step_in_episode % horizon
    starts = (phase == 0).nonzero()[:, 0]
    chunk_of = torch.cummax(torch.where(phase == 0, frame, 0), 0).values  # each frame's chunk start

    def base_chunks(fields: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        out = []
        for part in rows.split(batch_size):
            obs: dict[str, Any] = {k: v[part, 0] for k, v in fields.items()}
            if buffer.task_names:
                obs["task"] = [buffer.task_names[i] for i in buffer.task[part, 0].tolist()]
            out.append(policy.base.act(obs, deterministic=True).action.clamp(-1, 1).float())
        return torch.cat(out)

    started = base_chunks(buffer.obs, starts).cpu()  # the chunk proposed at each chunk start
    chunks = torch.zeros(steps, *started.shape[1:])
    chunks[starts] = started
    base = chunks[chunk_of, phase]
    next_base, next_phase = torch.zeros_like(base), torch.zeros_like(phase)
    next_base[:-1], next_phase[:-1] = base[1:], phase[1:]
    ended = done.nonzero()[:, 0]
    if len(ended):
        next_base[ended] = base_chunks(buffer.next_obs, ended).cpu()[:, 0]  # a final state starts a fresh chunk
        next_phase[ended] = 0
    buffer.add_obs_field(BASE_ACTION, base[:, None], next_base[:, None])
    buffer.add_obs_field(PHASE, phase.float()[:, None, None], next_phase.float()[:, None, None])
