"""Value-guided policy steering (V-GPS, Nakamoto et al., 2024): at deployment, sample K action
chunks from any base policy and execute the one a learned Q ranks highest. The base's weights
do not change.

    chunks a_1..a_K ~ base(. | s)           (K samples, (N, K, T, A); with `include_mode` the
                                            first is the base's deterministic chunk)
    a_k <- mode + temperature (a_k - mode)  (`temperature` < 1 keeps proposals near the base's
                                            deterministic chunk: a Gaussian's std is scaled by it)
    k* = argmax_k  min_e Q_e(features(s), a_k[first action])
    act(s) = a_{k*}

Q is any callable `(features (B, F), action (B, A)) -> (E, B)`: the critic of a residual or
offline-to-online run (`load_run_critic` reads one from a run's latest checkpoint). Features
are the base's own (`base.features`) when it has them, which is what those critics were
trained on. Chunks are scored by their first action (the critics score single actions), or,
with `chunk_q`, whole (a chunk-level Q reads the flattened chunk, as offline-to-online's
critic for a chunked policy does).

With a chunk-level Q, `keep` and `refine_steps` add PA-RL's local optimization
(embodied/algos/parl.py `improve_actions`): the `keep` best proposals take `refine_steps`
steps of gradient ascent on Q and the best result is executed. That is how PA-RL's agent acts,
online and in evaluation (Mark et al.'s code samples the base, ranks, refines, then takes the
argmax): the policy it distils into is its proposal distribution, not the whole agent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from policies.base import Policy, PolicyOutput

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ValueGuidedPolicy(Policy):
    """base + a Q function: the best of `num_samples` sampled chunks (not saved as a kind of
    its own: wrap a loaded base and critic at deployment)."""

    kind = "vgps"
    config_class = dict

    def __init__(self, base: Policy, q_function: QFunction, num_samples: int = 16,
                 features: Callable[[dict[str, Any]], torch.Tensor] | None = None, include_mode: bool = True,
                 temperature: float = 1.0, chunk_q: bool = False, keep: int | None = None, refine_steps: int = 0,
                 step_size: float = 0.03, freeze_base: bool = True):
        super().__init__(getattr(base, "config", {}))
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1; got {num_samples}.")
        if temperature < 0:
            raise ValueError(f"temperature scales the proposals' spread around the base's mode; got {temperature}.")
        if refine_steps and not chunk_q:
            raise ValueError("refine_steps ascends a chunk-level Q (chunk_q=True); a first-action Q cannot refine a chunk.")
        self.temperature = temperature
        self.chunk_q = chunk_q
        self.keep = keep or num_samples  # proposals that are refined (PA-RL's global then local optimization)
        self.refine_steps = refine_steps
        self.step_size = step_size
        self.base = base.eval().requires_grad_(False) if freeze_base else base  # not frozen: an agent that trains it
        self.q_function = q_function
        self.num_samples = num_samples
        self.include_mode = include_mode  # the base's deterministic chunk is one of the K proposals
        features_fn = features or getattr(base, "features", None)
        if features_fn is None:
            raise ValueError(f"{type(base).__name__} has no `features`; pass the features the critic was trained on.")
        self.features_fn: Callable[[dict[str, Any]], torch.Tensor] = features_fn

    @torch.no_grad()
    def scores(self, obs: dict[str, Any], chunks: torch.Tensor) -> torch.Tensor:
        """(N, K) pessimistic Q (min over the ensemble) of chunks (N, K, T, A), by their first
        action or (`chunk_q`) whole."""
        n, k = chunks.shape[:2]
        features = self.features_fn(obs)
        actions = chunks.flatten(2) if self.chunk_q else chunks[:, :, 0]
        q = self.q_function(features.repeat_interleave(k, 0), actions.reshape(n * k, -1).clamp(-1, 1))
        return q.min(0).values.view(n, k)

    @torch.no_grad()
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        """`deterministic` is ignored for the sampling (V-GPS needs K distinct proposals) and
        kept in the ranking: the argmax is deterministic given the samples."""
        chunks = self.base.propose_chunks(obs, self.num_samples, self.temperature, self.include_mode)
        if self.refine_steps:  # PA-RL: rank, keep the best `keep`, climb Q, take the best
            from embodied.algos.parl import improve_actions

            n, _, t, a = chunks.shape
            chosen, _ = improve_actions(self.q_function, self.features_fn(obs), chunks.flatten(2).clamp(-1, 1),
                                        self.keep, self.refine_steps, self.step_size)
            action = chosen.view(n, t, a)
            return PolicyOutput(action=action, log_prob=torch.zeros(n, device=action.device), extras={})
        best = self.scores(obs, chunks).argmax(1)
        action = chunks[torch.arange(chunks.shape[0]), best]
        return PolicyOutput(action=action, log_prob=torch.zeros(action.shape[0], device=action.device),
                            extras={"chosen": best})

    def evaluate(self, obs, actions, extras):
        raise NotImplementedError("V-GPS is a deployment-time wrapper; train the base or the critic instead.")


def load_run_critic(run_dir: str | Path) -> torch.nn.Module:
    """The Q ensemble of an off-policy run (algo residual or o2o) from its latest checkpoint."""
    from embodied.algos.offpolicy import QEnsemble
    from embodied.runner.checkpoint import latest_checkpoint

    state = torch.load(latest_checkpoint(Path(run_dir)) / "trainer.pt", weights_only=False)["algo"]
    if "critic" not in state:
        raise ValueError(f"{run_dir} holds no Q ensemble (an off-policy run's checkpoint has one).")
    config = Path(run_dir) / "config.yaml"
    if config.is_file():
        import yaml

        if (yaml.safe_load(config.read_text()).get("policy") or {}).get("base_horizon", 1) > 1:
            raise ValueError(f"{run_dir}'s critic scores states that hold the base's chunk phase (policy.base_horizon > 1); "
                             "V-GPS ranks actions on observation features alone.")
    weights = state["critic"]
    first = weights["net.0.weight"]  # (E, F + A, hidden)
    layers = sorted(int(k.split(".")[1]) for k in weights if k.endswith(".weight") and weights[k].dim() == 3)
    hidden = tuple(int(weights[f"net.{i}.weight"].shape[2]) for i in layers[:-1])
    # forward concatenates features and action, so only their total width matters here
    critic = QEnsemble(first.shape[1] - 1, 1, first.shape[0], hidden)
    critic.load_state_dict(weights)
    return critic.eval().requires_grad_(False)
