"""The policy contract shared by small policies and VLAs.

``act(obs) -> PolicyOutput`` samples (or, deterministically, picks) an action chunk with its
log-probability and value; ``evaluate(obs, actions, extras)`` recomputes log-probabilities,
entropy and values for the update. ``extras`` carries whatever a policy needs to recompute a
log-prob exactly (sampled tokens, a denoising noise path). Policies save and load in the
Hugging Face layout: ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy buildable by name (its config's `kind`)."""
    POLICIES[cls.kind] = cls
    return cls


@dataclasses.dataclass
class PolicyConfig:
    """Base of the policy configs; a YAML `policy:` section picks its class by `kind`."""

    variant_key: ClassVar[str] = "kind"
    default_variant: ClassVar[str] = "mlp"
    kind: str = ""

    @staticmethod
    def variants() -> dict[str, type]:
        return {kind: policy.config_class for kind, policy in POLICIES.items()}


@dataclasses.dataclass
class PolicyOutput:
    """One decision for N envs.

    action:   (N, T, A) float32 chunk of T actions in env units ([-1, 1])
    log_prob: (N,) log-probability of the whole chunk under the sampling distribution
    value:    (N,) state-value estimate, or None for critic-free policies
    extras:   per-env tensors (N, ...) that `evaluate` needs to recompute `log_prob`
    """

    action: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FeatureSpec:
    """What a policy reads and emits, in dataset terms (checked against a dataset before SFT)."""

    images: dict[str, tuple[int, int]]  # feature key -> (H, W) of uint8 (H, W, 3) images
    vectors: tuple[str, ...]  # feature keys concatenated into the policy's vector input
    vector_dim: int  # their total dimension
    action_dim: int
    chunk_size: int


LOG_PROB_LEVELS = ("chunk", "action", "token")


def reduce_log_prob(elements: torch.Tensor, level: str) -> torch.Tensor:
    """(N, T, A) element log-probs -> (N, K) at `level`: chunk K = 1, action K = T, token K = T * A."""
    if level == "chunk":
        return elements.flatten(1).sum(1, keepdim=True)
    if level == "action":
        return elements.sum(2)
    if level == "token":
        return elements.flatten(1)
    raise ValueError(f"Unknown log-prob level {level!r}; valid: {', '.join(LOG_PROB_LEVELS)}.")


def repeat_obs(obs: dict[str, Any], times: int) -> dict[str, Any]:
    """Each observation `times` times in a row (env-major): tensors and instruction lists."""
    if times == 1:
        return obs
    return {k: v.repeat_interleave(times, 0) if isinstance(v, torch.Tensor) else [x for x in v for _ in range(times)]
            for k, v in obs.items()}


class Policy(nn.Module, abc.ABC):
    """Base class: a `config` dataclass, act/evaluate, and HF-layout save/load."""

    kind: ClassVar[str]
    config_class: ClassVar[type]
    # config fields that leave the weights as they are (sampling temperature, noise level, whether
    # the critic's gradient reaches a shared backbone): a run that starts from a saved policy
    # takes them from its own config
    runtime_fields: ClassVar[tuple[str, ...]] = ()
    critic_modules: ClassVar[tuple[str, ...]] = ("critic", "value_head", "state_critic")  # the value function's submodules
    # config fields that add weights to a loaded policy (LoRA adapters): applied after loading
    adapter_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    @property
    def chunk_size(self) -> int:
        return getattr(self.config, "chunk_size", 1)

    @abc.abstractmethod
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        """Choose an action chunk for each env of the batch."""

    @abc.abstractmethod
    def evaluate(
        self, obs: dict[str, Any], actions: torch.Tensor, extras: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """log_prob (N,), entropy (N,), value (N,) or None of `actions` (N, T, A) at `obs`."""

    def evaluate_elements(
        self, obs: dict[str, Any], actions: torch.Tensor, extras: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Like `evaluate`, with the log-prob kept per element: (N, T, A) (one per action token
        of an AR VLA, per action dimension of a Gaussian or a flow chain); summed, it is
        `evaluate`'s log-prob. RL reads it for per-action and per-token credit."""
        raise NotImplementedError(
            f"{type(self).__name__} has only a chunk-level log-prob; use log_prob_level: chunk."
        )

    def evaluate_at(
        self, obs: dict[str, Any], actions: torch.Tensor, extras: dict[str, torch.Tensor], level: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """log-prob at `level` ("chunk": (N, 1), "action": (N, T), "token": (N, T * A)),
        entropy (N,) and value (N,) or None."""
        if level == "chunk":
            log_prob, entropy, value = self.evaluate(obs, actions, extras)
            return log_prob[:, None], entropy, value
        elements, entropy, value = self.evaluate_elements(obs, actions, extras)
        return reduce_log_prob(elements, level), entropy, value

    @torch.no_grad()
    def sample_chunks(self, obs: dict[str, Any], samples: int) -> torch.Tensor:
        """(N, K, T, A) `samples` = K stochastic chunks per observation, in one batched `act`
        over the observations repeated K times (env-major); VLAs override it to encode each
        observation's prefix once. Off-policy RL reads it (PA-RL's proposals, Cal-QL's policy
        actions)."""
        repeated = repeat_obs(obs, samples)
        action = self.act(repeated).action
        return action.view(-1, samples, *action.shape[1:])

    @torch.no_grad()
    def propose_chunks(self, obs: dict[str, Any], samples: int, temperature: float = 1.0,
                       include_mode: bool = True) -> torch.Tensor:
        """(N, K, T, A) K candidate chunks per observation for a critic to choose from (V-GPS,
        PA-RL): with `include_mode` the first is the deterministic chunk, and every sample is
        pulled towards it, `mode + temperature (sample - mode)` (a Gaussian's std scaled by
        `temperature`; 0 proposes the mode only). A policy's random samples can be much worse
        than its deterministic chunk, which is what it is evaluated on."""
        if temperature < 0:
            raise ValueError(f"temperature scales the proposals' spread around the mode; got {temperature}.")
        if samples < 1:
            raise ValueError(f"propose_chunks proposes at least one chunk per observation; got samples={samples}.")
        drawn = samples - int(include_mode)
        chunks = self.sample_chunks(obs, drawn) if drawn > 0 else None
        if chunks is not None and not include_mode and temperature == 1.0:  # without the mode, drawn > 0
            return chunks
        mode = self.act(obs, deterministic=True).action[:, None]
        if chunks is None:
            return mode
        chunks = mode + temperature * (chunks - mode)
        return torch.cat([mode, chunks], dim=1) if include_mode else chunks

    def add_adapters(self, *args: Any, **fields: Any) -> None:
        """Add the adapters `adapter_fields` ask for (a VLA's LoRA); a subclass takes its own
        `adapter_fields` as parameters."""
        if any(args) or any(fields.values()):
            raise ValueError(f"{type(self).__name__} takes no adapters; got {fields or args}.")

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of a pretrained backbone (a VLA's vision-language model, or
        its LoRA adapters); RL may give them a learning rate of their own. None for small policies."""
        return []

    def critic_parameters(self) -> list[nn.Parameter]:
        """The parameters only the value function uses (what a critic warm-up trains)."""
        return [p for name, p in self.named_parameters() if name.split(".")[0] in self.critic_modules]

    def feature_spec(self) -> FeatureSpec:
        """The observation features this policy reads and the actions it emits."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its features.")

    def set_normalization(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Freeze dataset statistics {feature key: (mean, std)} into the policy (SFT calls this)."""
        raise NotImplementedError(f"{type(self).__name__} takes no dataset statistics.")

    def supervised_loss(self, obs: dict[str, Any], actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Behaviour-cloning loss of demonstrated `actions` (N, T, A) at `obs` and its metrics
        (token cross-entropy for the AR VLA, flow matching for the flow VLA, ...)."""
        raise NotImplementedError(f"{type(self).__name__} has no supervised (SFT/BC) loss.")

    def observe(self, obs: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Update running statistics (observation normalisation) with a rollout batch."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget per-episode state (queued chunk actions) before a fresh batch of episodes
        that start together; `act` of a stateless policy has none."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (and `save_files`' extras) to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": self.kind, **dataclasses.asdict(self.config)}
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        self.save_files(directory)

    def save_files(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Write files besides the weights (a VLA's tokenizer)."""

    @classmethod
    def build_for_folder(cls, config: Any, directory: Path) -> Policy:
        """The policy that `directory`'s weights load into; a VLA reads its tokenizer here."""
        return cls(config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, overrides: dict[str, Any] | None = None) -> Policy:
        """Load a policy saved by `save_pretrained` (any registered kind when called on Policy),
        or, called on Policy, a LeRobot ``pretrained_model`` folder (through the LeRobot adapter);
        `overrides` sets `runtime_fields` (before building) and `adapter_fields` (after loading)."""
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"No config.json in {str(directory)!r}: not a saved policy folder.")
        raw = json.loads(config_path.read_text())
        if "kind" not in raw and "type" in raw and getattr(cls, "kind", None) is None:  # LeRobot's folder
            from policies.lerobot_adapter import load_lerobot_policy

            return load_lerobot_policy(directory, **(overrides or {}))
        kind = raw.pop("kind", getattr(cls, "kind", None))
        if kind not in POLICIES:
            raise ValueError(f"Unknown policy kind {kind!r} in {config_path}; known: {', '.join(POLICIES)}.")
        policy_cls = POLICIES[kind]
        from embodied.config import from_dict

        config: Any = from_dict(policy_cls.config_class, raw)
        overrides = dict(overrides or {})
        adapters = {f: overrides.pop(f) for f in policy_cls.adapter_fields if f in overrides}
        if overrides:
            config = dataclasses.replace(config, **overrides)
        policy = policy_cls.build_for_folder(config, directory)
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"No model.safetensors in {str(directory)!r}: the policy's weights are missing.")
        state = load_file(weights)
        missing, unexpected = policy.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"Checkpoint {directory} does not fit a {kind} policy of this config: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
        if adapters:
            policy.add_adapters(**adapters)
        return policy
