"""Offline-to-online RL: pretrain on a LeRobot dataset with rewards (Cal-QL or IQL), then keep
learning online, WSRL-style (Zhou et al., "Efficient Online RL Fine-Tuning Need Not Retain
Offline Data") or RLPD-style (Ball et al.), chosen by `online_mode`.

The policy is a Gaussian MLP/CNN (`policy.kind: mlp`; its actions are clipped to [-1, 1]
before they reach Q), trained by the method's own actor update (`actor_update: native`: SAC
for Cal-QL, AWR for IQL) or by PA-RL (`actor_update: parl`, embodied/algos/parl.py); or any
other `Policy` with `act` and `supervised_loss` (the flow and AR VLAs), which only PA-RL can
train (it needs samples and a supervised loss, no density), with a Cal-QL critic. For such a
policy:

  * the critic is asymmetric: Q reads the privileged state vector
    [observation.state, observation.environment_state] normalised with the dataset's
    statistics, not the images the policy sees (the asymmetric actor-critic used for sim
    training, Pinto et al. 2017; the policy stays deployable from pixels);
  * Q is chunk-level: for a policy emitting T actions per decision,
    Q(s_t, flatten(a_t..a_{t+T-1})) with the T-step discounted reward sum and the bootstrap
    at s_{t+T} (`algo.n_step` is T; the replay buffer's n-step machinery with `chunk=T`).
    A chunk that runs past its episode's end is padded with the episode's last action (the
    target there has no bootstrap or the truncated episode's own, so the pad never matters
    to the return; Q sees it as part of the input, as SFT's chunks do);
  * Cal-QL's policy actions (its CQL term and its next-state target) are chunks sampled from
    the policy in batch (`Policy.sample_chunks`: one prefix encoding, K chains). The policy
    has no cheap density, so its samples are weighted like the uniform ones (the regulariser
    becomes a soft maximum of Q over uniform and policy chunks, with Cal-QL's calibration on
    the latter); the chunks drawn for it are reused as PA-RL's K proposals;
  * online, each env executes its chunk step by step (a fresh chunk when the last is used up
    or the episode ended) and every step is stored;
  * the policy keeps the state normalisation it was trained with (SFT froze it), and is
    normally initialised from a trained policy (`init_from`).

The run, top to bottom:

  1. offline: `offline_updates` gradient updates on the dataset alone (no env steps; the
     Trainer's iterations run `updates_per_iteration` of them each), the method's losses
     (embodied/algos/calql.py or iql.py) on n-step batches from the dataset buffer; Cal-QL's
     actor is behaviour-cloned for the first `bc_updates` of them while its critic learns;
  2. online, `online_mode`:
       wsrl: the dataset is dropped; `wsrl_warmup_steps` batched env steps are collected with
             the pretrained policy before any update (they seed the online buffer), then the
             losses run on online data only, Cal-QL's conservative weight set to
             `online_cql_alpha` (WSRL fine-tunes with plain SAC-style TD: 0);
       rlpd: each batch is `offline_fraction` dataset and the rest online (symmetric sampling),
             the losses unchanged.
     Each iteration collects `steps_per_iteration` batched env steps, then runs
     `updates_per_step` updates per step.

`method: iql` uses the policy's own value head as V(s).

With `parl_act` the agent acts as PA-RL's does (online and in evaluation: `acting_policy`): the
policy's `parl_samples` proposals, the `parl_keep` best by Q refined by `parl_steps` of gradient
ascent, the best executed (policies/vgps.py); the policy it distils into is the proposal
distribution, and the checkpoint holds the policy alone.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import torch

from embodied.algos import calql, iql, parl
from embodied.algos.base import AlgoConfig, Algorithm, register_algo
from embodied.algos.offpolicy import QEnsemble, collect_steps, pair_min, polyak
from embodied.algos.sft import random_shift
from embodied.data.dataset import DemoDataset, check_features
from embodied.data.replay import ReplayBuffer, from_lerobot, returns_to_go, sample_mixed
from embodied.runner.rollout import ChunkRunner
from policies.base import Policy
from policies.mlp import GaussianActorCritic

CRITIC_STATE = ("observation.state", "observation.environment_state")  # the asymmetric critic's input


@dataclasses.dataclass
class O2OConfig(AlgoConfig):
    name: str = "o2o"
    method: Literal["calql", "iql"] = "calql"
    dataset: str = ""  # a local LeRobotDataset with next.reward / next.done
    dataset_reward: Literal["dataset", "success"] = "success"  # success: sparse 0/1 from next.success
    reward_scale: float = 1.0  # rewards (offline and online) are multiplied by it: the conservative term's
    #   weight is relative to the reward's scale (Cal-QL scales 0/1 rewards by 10)
    online_mode: Literal["wsrl", "rlpd"] = "wsrl"
    lr: float = 3e-4  # actor (and IQL's value head)
    critic_lr: float = 3e-4
    gamma: float = 0.97
    n_step: int = 3  # chunked policies: T, the chunk size
    tau: float = 0.005
    batch_size: int = 256
    num_critics: int = 2
    critic_hidden_sizes: tuple[int, ...] = (256, 256)
    offline_updates: int = 5000
    updates_per_iteration: int = 250  # offline updates between logs
    buffer_steps: int = 20_000
    steps_per_iteration: int = 25
    updates_per_step: float = 4.0
    wsrl_warmup_steps: int = 100
    offline_fraction: float = 0.5  # rlpd
    cql_alpha: float = 1.0
    online_cql_alpha: float = 0.0  # wsrl's online conservative weight
    cql_samples: int = 4
    entropy_coef: float = 0.01  # SAC temperature of Cal-QL's actor (fixed)
    critic_warmup_updates: int = 0  # the first updates train the critic only (the policy is not updated)
    bc_updates: int = 0  # Gaussian actor: the first offline updates behaviour-clone it (CQL's policy_eval_start), then SAC or PA-RL
    iql_expectile: float = 0.8
    iql_beta: float = 3.0
    actor_update: Literal["native", "parl"] = "native"  # native: the method's own (SAC / AWR); parl: PA-RL
    parl_samples: int = 16
    parl_keep: int = 4
    parl_steps: int = 5
    parl_step_size: float = 0.03
    parl_temperature: float = 1.0  # a policy without a density (VLAs): proposals mode + temperature (sample - mode)
    parl_include_mode: bool = False  # ... and the deterministic chunk among them (Policy.propose_chunks)
    parl_act: bool = False  # PA-RL's agent acts (online and in evaluation) with the action optimization: the best of
    #   parl_samples proposals, the parl_keep best refined by parl_steps of ascent on Q (policies/vgps.py)
    distil_anchor_dataset: str = ""  # PA-RL: a demo dataset (the SFT one) whose supervised loss is added to the
    distil_anchor_weight: float = 1.0  #   distillation's, weighted (self-distillation alone drifts a tiny flow VLA)
    distil_shift_pixels: int = 4  # PA-RL: the random-shift image augmentation SFT trains with (0: none)
    max_grad_norm: float = 10.0


@register_algo
class OfflineToOnline(Algorithm[O2OConfig]):
    config_class = O2OConfig

    def __init__(self, policy: Policy, cfg: O2OConfig):
        super().__init__(policy, cfg)
        self.gaussian = isinstance(policy, GaussianActorCritic)
        if self.gaussian and policy.chunk_size != 1:
            raise ValueError("algo o2o trains a Gaussian MLP/CNN policy with chunk_size 1.")
        if not self.gaussian:
            kind = getattr(policy, "kind", type(policy).__name__)
            if cfg.actor_update != "parl":
                raise ValueError(f"algo o2o's native actor updates (Cal-QL's SAC, IQL's AWR) train a Gaussian MLP/CNN "
                                 f"policy; a {kind} policy trains with algo.actor_update=parl (PA-RL: its own supervised "
                                 "loss on Q-improved chunks).")
            if cfg.method != "calql":
                raise ValueError(f"PA-RL on a {kind} policy uses a Cal-QL critic (algo.method=calql); IQL's value is "
                                 "the Gaussian policy's value head.")
            if type(policy).supervised_loss is Policy.supervised_loss:
                raise ValueError(f"PA-RL distils into the policy with its supervised loss; {kind} has none.")
            if cfg.bc_updates:
                raise ValueError(f"algo.bc_updates behaviour-clones a Gaussian actor by likelihood; a {kind} policy "
                                 "starts from its own SFT (init_from). Set algo.bc_updates=0.")
        if not cfg.dataset:
            raise ValueError("algo.dataset must name a LeRobot dataset with rewards (embodied record writes one).")
        if cfg.reward_scale <= 0:
            raise ValueError(f"algo.reward_scale multiplies the rewards and must be > 0; got {cfg.reward_scale}.")
        spec = policy.feature_spec()
        self.chunk = spec.chunk_size
        self.n_step = self.chunk if self.chunk > 1 else cfg.n_step
        self.critic_keys = tuple(spec.vectors) if self.gaussian else CRITIC_STATE
        self.obs_keys = tuple(dict.fromkeys([*spec.images, *spec.vectors, *self.critic_keys]))
        self.image_keys = tuple(spec.images)
        self.anchor: DemoDataset | None = None
        if cfg.distil_anchor_dataset:
            if cfg.actor_update != "parl":
                raise ValueError("algo.distil_anchor_dataset anchors PA-RL's distillation; set algo.actor_update=parl.")
            self.anchor = DemoDataset(cfg.distil_anchor_dataset, keys=[*spec.images, *spec.vectors, "action"])
            check_features(self.anchor.features, spec, source=f"dataset {cfg.distil_anchor_dataset}")
        self.offline = from_lerobot(cfg.dataset, self.obs_keys, reward=cfg.dataset_reward)
        self.offline.return_to_go = returns_to_go(self.offline, cfg.gamma)
        stats = {k: (self.offline.obs[k][:, 0].mean(0), self.offline.obs[k][:, 0].std(0).clamp(min=1e-3))
                 for k in self.critic_keys}
        if self.gaussian:
            policy.set_normalization(stats)
        self.critic_mean = torch.cat([stats[k][0] for k in self.critic_keys])
        self.critic_std = torch.cat([stats[k][1] for k in self.critic_keys])
        self.action_dim = spec.action_dim * self.chunk  # Q's action input: the flattened chunk
        feature_dim = spec.vector_dim if self.gaussian else int(self.critic_mean.shape[0])
        self.critic = QEnsemble(feature_dim, self.action_dim, cfg.num_critics, tuple(cfg.critic_hidden_sizes))
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.agent: Policy | None = None
        if cfg.parl_act:
            if cfg.actor_update != "parl":
                raise ValueError("algo.parl_act makes PA-RL's action optimization act; set algo.actor_update=parl.")
            from policies.vgps import ValueGuidedPolicy

            self.agent = ValueGuidedPolicy(policy, self.critic, cfg.parl_samples, features=self.critic_features,
                                           include_mode=cfg.parl_include_mode, temperature=cfg.parl_temperature,
                                           chunk_q=True, keep=cfg.parl_keep, refine_steps=cfg.parl_steps,
                                           step_size=cfg.parl_step_size, freeze_base=False)
        self.buffer: ReplayBuffer | None = None
        self.runner: ChunkRunner | None = None
        self.env_steps = 0
        self.online_steps = 0
        self.pending_updates = 0.0

    @property
    def acting_policy(self) -> Policy:
        return self.agent if self.agent is not None else self.policy

    @property
    def gaussian_policy(self) -> GaussianActorCritic:
        """The policy, on the paths that need a Gaussian actor-critic's features, density and value
        head (Cal-QL, IQL; the constructor lets other policies reach only PA-RL's paths)."""
        if not isinstance(self.policy, GaussianActorCritic):
            raise TypeError(f"this path of algo o2o needs a Gaussian MLP/CNN policy; got {type(self.policy).__name__}.")
        return self.policy

    @property
    def online_buffer(self) -> ReplayBuffer:
        """The online replay buffer; built by the first online collect (shapes from the env)."""
        if self.buffer is None:
            raise RuntimeError("algo o2o reached its online phase without an online collect.")
        return self.buffer

    @property
    def offline_phase(self) -> bool:
        return self.updates < self.cfg.offline_updates

    # ------------------------------------------------------------------ collection
    def collect(self, env, obs, tracker) -> tuple[dict[str, Any], Any, None]:
        cfg = self.cfg
        if self.offline_phase:
            return {"env_steps": 0}, obs, None
        if self.buffer is None:
            shapes = {k: tuple(obs[k].shape[1:]) for k in self.obs_keys}
            dtypes = {k: obs[k].dtype for k in self.obs_keys if obs[k].dtype == torch.uint8}
            self.buffer = ReplayBuffer(cfg.buffer_steps, env.num_envs, shapes, env.action_dim, env.device, dtypes)
        if self.runner is None or self.runner.num_envs != env.num_envs:
            self.runner = ChunkRunner(self.acting_policy, env.num_envs, self.chunk)
        runner = self.runner

        def choose(o: dict[str, Any]) -> torch.Tensor:
            self.online_steps += 1
            return runner(o)

        obs = collect_steps(env, obs, cfg.steps_per_iteration, choose, self.buffer, tracker, on_done=runner.ended)
        return {"env_steps": cfg.steps_per_iteration * env.num_envs}, obs, None

    # ------------------------------------------------------------------ batches
    def sample(self) -> dict[str, Any]:
        """Offline: a dataset batch. Online: wsrl, online data only; rlpd, `offline_fraction`
        dataset rows. Each row carries its return-to-go (-inf for online rows) and its chunk of
        T actions (`action_chunk`, (B, T, A))."""
        cfg = self.cfg
        if self.offline_phase:
            batch = self.offline.sample(cfg.batch_size, self.n_step, cfg.gamma, self.generator, chunk=self.chunk)
        else:
            fraction = cfg.offline_fraction if cfg.online_mode == "rlpd" else 0.0
            batch = sample_mixed(self.online_buffer, self.offline, cfg.batch_size, fraction, self.n_step, cfg.gamma,
                                 self.generator, chunk=self.chunk)
        if cfg.reward_scale != 1.0:
            for key in ("reward", "n_step_reward", "return_to_go"):
                batch[key] = batch[key] * cfg.reward_scale
        return batch

    # ------------------------------------------------------------------ losses
    def critic_features(self, obs: dict[str, Any]) -> torch.Tensor:
        """Q's state input (B, F): the Gaussian policy's own features, or the normalised
        privileged state (asymmetric critic)."""
        if self.gaussian:
            return self.gaussian_policy.features(obs)
        state = torch.cat([obs[k].float().flatten(1) for k in self.critic_keys], dim=1)
        return (state - self.critic_mean.to(state.device)) / self.critic_std.to(state.device)

    def policy_sample(self, features: torch.Tensor, samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian policy: (B, K, A) reparameterised actions in [-1, 1] and their log-probs (B, K)."""
        dist = self.gaussian_policy.distribution(features)
        raw = dist.rsample((samples,))  # (K, B, A)
        log_prob = dist.log_prob(raw).sum(-1)
        return raw.clamp(-1, 1).transpose(0, 1), log_prob.transpose(0, 1)

    @torch.no_grad()
    def policy_actions(self, obs: dict[str, Any], features: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K policy actions per state as Q reads them, (B, K, D) (flattened chunks), and the
        log-densities CQL weighs them by (B, K): the Gaussian's own; for a policy without a
        density, the uniform's (see the module docstring)."""
        if self.gaussian:
            return self.policy_sample(features, samples)
        chunks = self.policy.sample_chunks(obs, samples).flatten(2)
        return chunks, torch.full(chunks.shape[:2], -self.action_dim * math.log(2.0), device=chunks.device)

    def data_action(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's actions as Q reads them: (B, T * A) flattened chunks in [-1, 1]."""
        return batch["action_chunk"].flatten(1).clamp(-1, 1)

    def q_at(self, critic: QEnsemble, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of K actions per state: features (B, F), actions (B, K, A) -> (E, B, K)."""
        b, k, a = actions.shape
        q = critic(features.repeat_interleave(k, 0), actions.reshape(b * k, a))
        return q.view(-1, b, k)

    def calql_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Callable[[], torch.Tensor], dict[str, torch.Tensor]]:
        """The critic loss, a function giving the actor loss (called after the critic's step,
        with the critic frozen), and statistics."""
        cfg = self.cfg
        features = self.critic_features(batch["obs"]).detach()
        with torch.no_grad():
            next_features = self.critic_features(batch["next_obs"])
            next_action, _ = self.policy_actions(batch["next_obs"], next_features, 1)
            next_q = pair_min(self.q_at(self.target_critic, next_features, next_action)[..., 0], self.generator)
            target = batch["n_step_reward"] + batch["discount"] * next_q
        q_data = self.critic(features, self.data_action(batch))
        alpha = cfg.cql_alpha if self.offline_phase or cfg.online_mode == "rlpd" else cfg.online_cql_alpha
        with torch.no_grad():
            uniform = torch.rand(features.shape[0], cfg.cql_samples, self.action_dim, generator=self.generator) * 2 - 1
            uniform = uniform.to(features.device)
            drawn = max(cfg.cql_samples, cfg.parl_samples if cfg.actor_update == "parl" and not self.gaussian else 0)
            samples, samples_log_prob = self.policy_actions(batch["obs"], features, drawn)
            policy_actions, policy_log_prob = samples[:, : cfg.cql_samples], samples_log_prob[:, : cfg.cql_samples]
            if not self.gaussian:
                batch["policy_samples"] = samples  # PA-RL's proposals (the policy is unchanged until the actor step)
        q_uniform = self.q_at(self.critic, features, uniform)
        q_policy = self.q_at(self.critic, features, policy_actions)
        loss, stats = calql.critic_loss(q_data, target, q_uniform, q_policy, policy_log_prob, batch["return_to_go"],
                                        self.action_dim, alpha)

        def actor() -> torch.Tensor:
            actions, log_prob = self.policy_sample(features)
            if self.updates < cfg.bc_updates:
                data_log_prob = self.gaussian_policy.distribution(features).log_prob(batch["action"].clamp(-1, 1)).sum(-1)
                return calql.bc_actor_loss(log_prob[:, 0], data_log_prob, cfg.entropy_coef)
            return calql.actor_loss(log_prob[:, 0], self.q_at(self.critic, features, actions)[..., 0], cfg.entropy_coef)

        return loss, actor, {**stats, "q": q_data.mean().detach()}

    def iql_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Callable[[], torch.Tensor], dict[str, torch.Tensor]]:
        """Like `calql_losses`; the actor loss includes the value head's expectile loss."""
        cfg = self.cfg
        features = self.gaussian_policy.features(batch["obs"]).detach()
        action = self.data_action(batch)
        with torch.no_grad():
            target_q = self.target_critic(features, action).min(0).values
            next_value = self.gaussian_policy.critic(self.gaussian_policy.features(batch["next_obs"]))[:, 0]
        value = self.gaussian_policy.critic(features)[:, 0]
        q = self.critic(features, action)
        critic = iql.critic_loss(q, batch["n_step_reward"], batch["discount"], next_value)
        weights = iql.awr_weights(target_q, value.detach(), cfg.iql_beta)
        log_prob = self.gaussian_policy.distribution(features).log_prob(action).sum(-1)
        actor = iql.actor_loss(log_prob, weights) + iql.value_loss(target_q, value, cfg.iql_expectile)
        return critic, lambda: actor, {"critic_loss": critic.detach(), "q": q.mean().detach(), "v": value.mean().detach(),
                               "awr_weight": weights.mean()}

    def parl_actor_loss(self, batch: dict[str, Any], stats: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
        """PA-RL (embodied/algos/parl.py): the policy's own supervised loss on the best refined
        of `parl_samples` of its actions or chunks (flattened for Q, reshaped (B, T, A) for the
        loss; IQL: plus the value head's expectile loss)."""
        cfg = self.cfg

        def loss() -> torch.Tensor:
            features = self.critic_features(batch["obs"]).detach()
            candidates = batch.get("policy_samples")
            if not self.gaussian and (cfg.parl_include_mode or cfg.parl_temperature != 1.0):
                candidates = self.policy.propose_chunks(batch["obs"], cfg.parl_samples, cfg.parl_temperature,
                                                        cfg.parl_include_mode).flatten(2)
            elif candidates is None:
                candidates, _ = self.policy_actions(batch["obs"], features, cfg.parl_samples)
            candidates = candidates[:, : cfg.parl_samples]
            chosen, improve_stats = parl.improve_actions(self.critic, features, candidates, cfg.parl_keep, cfg.parl_steps,
                                                         cfg.parl_step_size)
            stats.update(improve_stats)
            distil, _ = self.policy.supervised_loss(self.augment(batch["obs"]), chosen.view(chosen.shape[0], self.chunk, -1))
            if self.anchor is not None:
                anchor_obs, anchor_actions, _ = self.anchor.sample(cfg.batch_size, self.chunk, self.generator)
                anchor, _ = self.policy.supervised_loss(self.augment(anchor_obs), anchor_actions)
                stats["anchor_loss"] = anchor.detach()
                distil = distil + cfg.distil_anchor_weight * anchor
            if cfg.method == "iql":
                with torch.no_grad():
                    target_q = self.target_critic(features, self.data_action(batch)).min(0).values
                distil = distil + iql.value_loss(target_q, self.gaussian_policy.critic(features)[:, 0], cfg.iql_expectile)
            return distil

        return loss

    def augment(self, obs: dict[str, Any]) -> dict[str, Any]:
        """SFT's random-shift augmentation of the image keys (`distil_shift_pixels`)."""
        if not (self.cfg.distil_shift_pixels and self.image_keys):
            return obs
        return {**obs, **{k: random_shift(obs[k], self.cfg.distil_shift_pixels, self.generator) for k in self.image_keys}}

    # ------------------------------------------------------------------ update
    def update(self, batch: dict[str, Any], iteration: int) -> dict[str, float]:
        cfg = self.cfg
        if self.offline_phase:
            count = min(cfg.updates_per_iteration, cfg.offline_updates - self.updates)
        else:
            if cfg.online_mode == "wsrl" and self.online_steps <= cfg.wsrl_warmup_steps:
                return {"buffer": float(len(self.online_buffer)), "updates": float(self.updates)}
            self.pending_updates += cfg.updates_per_step * cfg.steps_per_iteration
            count = int(self.pending_updates)
            self.pending_updates -= count
        totals: dict[str, float] = {}
        losses = self.calql_losses if cfg.method == "calql" else self.iql_losses
        for _ in range(count):
            sample = self.sample()
            critic, actor_loss, stats = losses(sample)
            if cfg.actor_update == "parl" and self.updates >= cfg.bc_updates:  # after the BC warm start
                actor_loss = self.parl_actor_loss(sample, stats)
            self.check_finite(critic, stats, iteration)
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic.backward()
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
            self.critic_optimizer.step()
            if self.updates >= cfg.critic_warmup_updates:
                self.critic.requires_grad_(False)
                actor = actor_loss()
                self.check_finite(actor, {"actor_loss": actor.detach()}, iteration)
                self.optimizer.zero_grad(set_to_none=True)
                actor.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.critic.requires_grad_(True)
                stats["actor_loss"] = actor.detach()
            polyak(self.target_critic, self.critic, cfg.tau)
            self.updates += 1
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        metrics = {k: v / max(count, 1) for k, v in totals.items()}
        return {**metrics, "updates": float(self.updates), "offline": float(self.offline_phase)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "critic": self.critic.state_dict(), "target_critic": self.target_critic.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), "updates": self.updates,
                "online_steps": self.online_steps, "pending_updates": self.pending_updates,
                "buffer": self.buffer.state_dict() if self.buffer is not None else None,
                "buffer_shapes": (self.buffer.obs_shapes, self.buffer.num_envs, self.buffer.action_dim,
                                  self.buffer.obs_dtypes) if self.buffer else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.updates, self.online_steps, self.pending_updates = state["updates"], state["online_steps"], state["pending_updates"]
        if state["buffer"] is not None:
            shapes, num_envs, action_dim, *dtypes = state["buffer_shapes"]
            self.buffer = ReplayBuffer(self.cfg.buffer_steps, num_envs, shapes, action_dim,
                                       obs_dtypes=dtypes[0] if dtypes else None)
            self.buffer.load_state_dict(state["buffer"])
