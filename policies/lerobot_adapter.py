"""LeRobot policies (ACT, diffusion, ...) behind this platform's `Policy` interface.

A LeRobot 0.6 ``pretrained_model`` folder (what ``lerobot-train`` writes under
``checkpoints/<step>/pretrained_model`` and what a Hub repo holds) is:

- ``config.json``: the policy's ``PreTrainedConfig`` with its ``"type"`` (``"act"``,
  ``"diffusion"``, ...), ``input_features`` / ``output_features`` (name -> type and shape) and
  the architecture;
- ``model.safetensors``: the weights of the ``PreTrainedPolicy``;
- ``policy_preprocessor.json`` / ``policy_postprocessor.json``: the processor pipelines (rename,
  add batch dim, device, normalise; unnormalise, to CPU), each stateful step's statistics in
  ``policy_{pre,post}processor_step_<i>_<name>.safetensors``.

`LeRobotPolicy` loads such a folder with LeRobot's own code (``PreTrainedConfig.from_pretrained``,
the policy class's ``from_pretrained``, ``PolicyProcessorPipeline.from_pretrained``) and, per
decision, converts our observation batch to LeRobot's (``observation.images.<cam>`` uint8
(N, H, W, 3) -> float (N, 3, H, W) in [0, 1]; ``observation.state`` and
``observation.environment_state`` float32 (N, D); ``task`` list[str]), runs the pre-processor
(normalisation), ``predict_action_chunk`` and the post-processor (unnormalisation), and returns
the first ``chunk_size`` actions (LeRobot's ``n_action_steps``, what its ``select_action`` queue
would execute) as an (N, T, A) chunk.

What it is for: evaluation (``embodied.evaluate.evaluate_policy``) and a frozen base policy. ACT
(a deterministic decoder at inference, the CVAE latent set to zero) and diffusion (DDPM/DDIM
sampling) have no tractable log-probability of an action chunk: `act` returns zeros as
``log_prob`` and no value, `evaluate` raises, the weights are frozen. The ``deterministic`` flag
changes nothing: ACT is deterministic anyway, diffusion always samples (seed torch for
repeatable chunks).

Differences from LeRobot's own ``select_action`` rollout, by design of a chunked interface:

- policies with an observation history (``n_obs_steps`` > 1, diffusion's default of 2) see the
  current observation repeated ``n_obs_steps`` times, which is what ``select_action`` does on an
  episode's first step; on later steps LeRobot would stack the last ``n_obs_steps`` per-step
  observations, which a stateless `act` over auto-resetting envs cannot know;
- ACT's temporal ensembling (``temporal_ensemble_coeff``) is not applied: each decision
  executes the first action of a fresh chunk.

Nothing is fetched from a hub: the folder must be local and complete (a missing file raises
`FileNotFoundError` naming it), loading runs with ``huggingface_hub`` in offline mode, and the
torchvision backbone weights named by ``pretrained_backbone_weights`` are never downloaded
(they are part of ``model.safetensors``). LeRobot is imported only when a policy is built.
Policies that read a VLM's config or tokenizer at construction (pi0, SmolVLA, ...) need those
files in a local folder or the cache. A SmolVLA is built with ``load_vlm_weights: false`` (its
checkpoint holds every weight) and a tokenizer-only VLM processor, and its prefix cache keeps
the ``crop`` that LeRobot 0.6.1 expects (see the SmolVLA shims below), so it runs on this
environment's newer transformers.

Saving (`save_pretrained`) writes our layout: ``config.json`` (kind ``"lerobot"``),
``model.safetensors`` (the weights) and the LeRobot folder's config and processor files under
``lerobot/``, so `Policy.from_pretrained` reloads it without the original folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from policies.base import FeatureSpec, Policy, PolicyConfig, PolicyOutput, register_policy

PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
LEROBOT_SUBFOLDER = "lerobot"  # where our saved folder keeps the LeRobot config and processors
MIGRATION_HINT = (
    "LeRobot checkpoints older than its processor pipelines (< 0.4) keep normalisation in the "
    "weights; convert them with `python -m lerobot.processor.migrate_policy_normalization`."
)


@dataclasses.dataclass
class LeRobotPolicyConfig(PolicyConfig):
    kind: str = "lerobot"
    path: str = ""  # a local LeRobot `pretrained_model` folder
    device: str = "cpu"  # where the model runs; actions come back on the CPU
    action_dim: int = 0  # 0: the LeRobot policy's; otherwise checked against it
    chunk_size: int = 0  # T actions per decision; 0: the LeRobot config's n_action_steps
    # {LeRobot input feature: our observation key} where names differ, e.g.
    # {"observation.images.top": "observation.images.front"}; other features keep their name.
    observation_map: dict[str, str] = dataclasses.field(default_factory=dict)
    clip_actions: bool = True  # clamp chunks to the env's [-1, 1] (the env clips them anyway)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Within the block every ``huggingface_hub`` HTTP request raises (as with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    saved_constant, saved_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_constant
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def is_lerobot_folder(directory: str | Path) -> bool:
    """Whether `directory` holds a LeRobot ``pretrained_model`` (config.json with a ``type``)."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return False
    raw = json.loads(config.read_text())
    return "type" in raw and "kind" not in raw


def check_lerobot_folder(directory: Path, weights: bool = True) -> dict[str, Any]:
    """Raise `FileNotFoundError` naming the first missing file of a LeRobot ``pretrained_model``
    folder (config, weights, processor configs and the state files they list); return config.json."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"LeRobot policy folder {str(directory)!r} does not exist (only local folders load; nothing "
            "is fetched from a hub)."
        )
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"No config.json in {str(directory)!r}: not a LeRobot pretrained_model folder.")
    raw = json.loads(config_path.read_text())
    if "type" not in raw:
        hint = " It is one of this platform's policy folders: load it with Policy.from_pretrained." if "kind" in raw else ""
        raise ValueError(f"{config_path} has no 'type': not a LeRobot policy config.{hint}")
    if weights and not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"No model.safetensors in {str(directory)!r}: the LeRobot policy's weights are missing.")
    for name in (PREPROCESSOR_FILE, POSTPROCESSOR_FILE):
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"No {name} in {str(directory)!r}: the policy's processor pipeline is missing. {MIGRATION_HINT}")
        for step in json.loads(path.read_text()).get("steps", []):
            state_file = step.get("state_file")
            if state_file and not (directory / state_file).is_file():
                raise FileNotFoundError(
                    f"{directory / state_file} is missing: {name} lists it ({step.get('registry_name', step.get('class'))} "
                    "statistics)."
                )
    return raw


# ---------------------------------------------------------------------------- SmolVLA on this stack
# LeRobot 0.6.1 pins transformers < 5.6 for SmolVLA; this environment resolves a newer one.
# Two shims make a SmolVLA checkpoint load and sample here, each a no-op for older versions.


def legacy_crop_cache_class() -> type:
    """A transformers ``DynamicCache`` whose ``crop(n)`` with n > 0 keeps the first n tokens.

    LeRobot 0.6.1's SmolVLA ``denoise_step`` restores the prefix after each step with
    ``past_key_values.crop(prefix_len)``: the meaning ``crop`` had up to transformers 5.5
    (LeRobot pins < 5.6). Newer transformers read a positive argument as an error (only
    negative "tokens to remove" are accepted), so SmolVLA's sampler raises there; this cache
    keeps the old meaning and leaves negative arguments to transformers."""
    global _LEGACY_CROP_CACHE
    if _LEGACY_CROP_CACHE is None:
        from transformers import DynamicCache

        class LegacyCropCache(DynamicCache):
            def crop(self, max_length: int) -> None:
                if max_length <= 0:
                    return super().crop(max_length)
                layer: Any  # SmolVLA's are key/value layers; the layer classes vary across transformers versions
                for layer in self.layers:
                    if getattr(layer, "is_initialized", True) and layer.keys is not None:
                        layer.keys = layer.keys[..., :max_length, :]
                        layer.values = layer.values[..., :max_length, :]
                return None

        _LEGACY_CROP_CACHE = LegacyCropCache
    return _LEGACY_CROP_CACHE


_LEGACY_CROP_CACHE: type | None = None


def install_smolvla_cache_compat() -> None:
    """SmolVLA's VLM-with-expert builds its prefix cache as a `legacy_crop_cache_class` cache,
    so LeRobot's own sampler (``sample_actions`` -> ``denoise_step`` -> ``crop``) runs on
    transformers >= 5.6 as it does on older versions."""
    from lerobot.policies.smolvla import smolvlm_with_expert

    smolvlm_with_expert.DynamicCache = legacy_crop_cache_class()


@contextlib.contextmanager
def tokenizer_only_vlm_processor() -> Iterator[None]:
    """While SmolVLA is built, ``AutoProcessor.from_pretrained(vlm)`` returns an object whose
    only attribute is the VLM's tokenizer: all LeRobot reads of it, and the full SmolVLM
    processor would need ``num2words`` (the ``lerobot[smolvla]`` extra)."""
    from lerobot.policies.smolvla import smolvlm_with_expert
    from transformers import AutoTokenizer

    class TokenizerOnlyProcessor:
        @staticmethod
        def from_pretrained(name: str, **kwargs: Any) -> Any:
            return types.SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(name, **kwargs))

    saved = smolvlm_with_expert.AutoProcessor
    smolvlm_with_expert.AutoProcessor = TokenizerOnlyProcessor
    try:
        yield
    finally:
        smolvlm_with_expert.AutoProcessor = saved


def load_lerobot_parts(
    directory: Path, device: str, weights: bool = True, config_overrides: dict[str, Any] | None = None
) -> tuple[Any, Any, Any]:
    """(PreTrainedPolicy, preprocessor, postprocessor) of a local LeRobot folder, offline; with
    ``weights=False`` the policy keeps its initial weights (the caller loads its own);
    `config_overrides` sets fields of the LeRobot config before the policy is built."""
    check_lerobot_folder(directory, weights=weights)
    with hub_offline():
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        lerobot_config = PreTrainedConfig.from_pretrained(directory, local_files_only=True)
        lerobot_config.device = device
        smolvla = lerobot_config.type == "smolvla"
        if smolvla:  # the checkpoint holds every weight: only the VLM's config and tokenizer are read
            config_overrides = {"load_vlm_weights": False, **(config_overrides or {})}
        for field, value in (config_overrides or {}).items():
            setattr(lerobot_config, field, value)
        if hasattr(lerobot_config, "pretrained_backbone_weights"):
            lerobot_config.pretrained_backbone_weights = None  # torchvision would download them; the weights hold them
        policy_class = get_policy_class(lerobot_config.type)
        with tokenizer_only_vlm_processor() if smolvla else contextlib.nullcontext():
            if weights:
                lerobot_policy = policy_class.from_pretrained(directory, config=lerobot_config, local_files_only=True,
                                                              strict=True)
            else:
                lerobot_policy = policy_class(lerobot_config).to(device)
        if smolvla:
            install_smolvla_cache_compat()
        overrides = {}
        steps = json.loads((directory / PREPROCESSOR_FILE).read_text()).get("steps", [])
        if any(step.get("registry_name") == "device_processor" for step in steps):
            overrides["device_processor"] = {"device": device}
        preprocessor, postprocessor = make_pre_post_processors(
            lerobot_config, pretrained_path=str(directory), preprocessor_overrides=overrides
        )
    lerobot_policy.eval()
    lerobot_policy.reset()
    return lerobot_policy, preprocessor, postprocessor


@register_policy
class LeRobotPolicy(Policy):
    """A frozen LeRobot ``PreTrainedPolicy`` with its processors; `act` returns action chunks."""

    kind = "lerobot"
    config_class = LeRobotPolicyConfig

    def __init__(self, config: LeRobotPolicyConfig, parts: tuple[Any, Any, Any] | None = None):
        if parts is None:
            if not config.path:
                raise ValueError("LeRobotPolicyConfig.path must name a local LeRobot pretrained_model folder.")
            parts = load_lerobot_parts(Path(config.path), config.device)
        lerobot_policy, preprocessor, postprocessor = parts
        lerobot_config = lerobot_policy.config
        action = lerobot_config.action_feature
        if action is None:
            raise ValueError(f"LeRobot policy {lerobot_config.type!r} declares no 'action' output feature.")
        action_dim = int(action.shape[0])
        if config.action_dim not in (0, action_dim):
            raise ValueError(
                f"policy.action_dim is {config.action_dim} (the env's, when built by make_policy), but the LeRobot "
                f"policy at {config.path} emits {action_dim}-dim actions."
            )
        n_action_steps = int(getattr(lerobot_config, "n_action_steps", 1))
        chunk_size = config.chunk_size or n_action_steps
        if chunk_size > n_action_steps:
            raise ValueError(f"chunk_size {chunk_size} exceeds the LeRobot policy's n_action_steps ({n_action_steps}).")
        super().__init__(dataclasses.replace(config, action_dim=action_dim, chunk_size=chunk_size))
        unknown = sorted(set(config.observation_map) - set(lerobot_config.input_features))
        if unknown:
            raise ValueError(
                f"observation_map names {unknown}, which the LeRobot policy does not read; its inputs: "
                f"{sorted(lerobot_config.input_features)}."
            )
        self.policy = lerobot_policy.requires_grad_(False)
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.n_obs_steps = int(getattr(lerobot_config, "n_obs_steps", 1))
        if self.n_obs_steps > 1:
            warnings.warn(
                f"The LeRobot {lerobot_config.type} policy reads {self.n_obs_steps} observation steps; each decision "
                "repeats the current one (as LeRobot's select_action does at an episode's first step).",
                stacklevel=2,
            )
        if getattr(lerobot_config, "temporal_ensemble_coeff", None) is not None:
            warnings.warn("ACT's temporal ensembling is not applied: each decision runs a fresh chunk.", stacklevel=2)

    # ---- features ----------------------------------------------------------------------------

    @property
    def lerobot_config(self) -> Any:
        return self.policy.config

    def obs_key(self, feature: str) -> str:
        """Our observation key for a LeRobot input feature."""
        return self.config.observation_map.get(feature, feature)

    def feature_spec(self) -> FeatureSpec:
        from lerobot.configs.types import FeatureType

        images: dict[str, tuple[int, int]] = {}
        vectors: list[str] = []
        vector_dim = 0
        for name, feature in self.lerobot_config.input_features.items():
            if feature.type is FeatureType.VISUAL:
                images[self.obs_key(name)] = (int(feature.shape[1]), int(feature.shape[2]))
            elif feature.type in (FeatureType.STATE, FeatureType.ENV):
                vectors.append(self.obs_key(name))
                vector_dim += int(feature.shape[0])
        return FeatureSpec(images, tuple(vectors), vector_dim, self.config.action_dim, self.config.chunk_size)

    def lerobot_batch(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Our observation batch as LeRobot's: images float (N, 3, H, W) in [0, 1], vectors float32
        (N, D), ``task`` list[str]; every shape checked against the LeRobot config's features."""
        from lerobot.configs.types import FeatureType

        batch: dict[str, Any] = {}
        for name, feature in self.lerobot_config.input_features.items():
            key = self.obs_key(name)
            if key not in obs:
                mapped = f" (mapped from LeRobot's {name!r})" if key != name else ""
                raise KeyError(
                    f"The LeRobot policy reads {key!r}{mapped}, which the observation lacks; it has "
                    f"{sorted(k for k in obs if k != 'task')}. Map names with observation_map or add the camera to the env."
                )
            value = torch.as_tensor(obs[key])
            if feature.type is FeatureType.VISUAL:
                if value.ndim != 4 or value.shape[-1] != 3:
                    raise ValueError(f"{key} should be uint8 (N, H, W, 3); got {tuple(value.shape)}.")
                image = value.permute(0, 3, 1, 2)
                if tuple(image.shape[1:]) != tuple(feature.shape):
                    raise ValueError(
                        f"{key} has images of (H, W) {tuple(value.shape[1:3])}; the LeRobot policy expects "
                        f"{tuple(feature.shape[1:])} (set the env's render size)."
                    )
                batch[name] = image.float() / 255.0 if value.dtype == torch.uint8 else image.float()
            else:
                if tuple(value.shape[1:]) != tuple(feature.shape):
                    raise ValueError(
                        f"{key} has shape {tuple(value.shape[1:])} per env; the LeRobot policy expects {tuple(feature.shape)}."
                    )
                batch[name] = value.float()
        n = next(iter(batch.values())).shape[0]
        batch["task"] = list(obs.get("task", [""] * n))
        return batch

    # ---- acting ------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N, chunk_size, A) float32 actions in the dataset's units (before clipping)."""
        batch = self.preprocessor(self.lerobot_batch(obs))
        if self.n_obs_steps > 1:  # (N, ...) -> (N, n_obs_steps, ...): the current step repeated
            for name in self.lerobot_config.input_features:
                batch[name] = batch[name].unsqueeze(1).expand(-1, self.n_obs_steps, *batch[name].shape[1:])
        self.policy.eval()
        chunk = self.policy.predict_action_chunk(batch)
        if chunk.ndim == 2:
            chunk = chunk.unsqueeze(1)
        if chunk.shape[1] < self.config.chunk_size:
            raise ValueError(f"The LeRobot policy predicted {chunk.shape[1]} actions; chunk_size is {self.config.chunk_size}.")
        return self.postprocessor(chunk[:, : self.config.chunk_size]).float().cpu()

    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        """An (N, T, A) chunk; ``log_prob`` zeros (N,) and no value: LeRobot's ACT and diffusion
        have no tractable log-probability (`deterministic` changes nothing, see the module doc)."""
        action = self.predict_chunk(obs)
        if self.config.clip_actions:
            action = action.clamp(-1.0, 1.0)
        return PolicyOutput(action=action, log_prob=torch.zeros(action.shape[0]), value=None)

    def evaluate(self, obs, actions, extras):
        raise NotImplementedError(
            f"LeRobot's {self.lerobot_config.type} policy has no tractable log-probability of an action chunk: "
            "it serves evaluation and as a frozen base policy, not as an RL policy."
        )

    def set_normalization(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        raise NotImplementedError("A LeRobot policy normalises with the statistics in its own processor files.")

    # ---- save / load -------------------------------------------------------------------------

    def save_files(self, directory: Path) -> None:
        """The LeRobot config and processors (not the weights: model.safetensors holds them) under lerobot/."""
        target = Path(directory) / LEROBOT_SUBFOLDER
        target.mkdir(parents=True, exist_ok=True)
        self.lerobot_config._save_pretrained(target)
        self.preprocessor.save_pretrained(target)
        self.postprocessor.save_pretrained(target)

    @classmethod
    def load_parts(cls, directory: Path, config: LeRobotPolicyConfig, weights: bool = True) -> tuple[Any, Any, Any]:
        """(PreTrainedPolicy, preprocessor, postprocessor) of a LeRobot folder, as this class needs them."""
        return load_lerobot_parts(directory, config.device, weights=weights)

    @classmethod
    def build_for_folder(cls, config: LeRobotPolicyConfig, directory: Path) -> LeRobotPolicy:
        """Our saved folder: the LeRobot parts from ``lerobot/`` (weights come from our model.safetensors)."""
        inner = Path(directory) / LEROBOT_SUBFOLDER
        if not (inner / "config.json").is_file():
            raise FileNotFoundError(f"{inner / 'config.json'} is missing: a saved {cls.kind} policy keeps its LeRobot config there.")
        config = dataclasses.replace(config, path=str(inner))
        return cls(config, parts=cls.load_parts(inner, config, weights=False))

    @classmethod
    def from_pretrained(cls, directory: str | Path, overrides: dict[str, Any] | None = None) -> Policy:
        """A folder saved by `save_pretrained`, or a LeRobot ``pretrained_model`` folder (`overrides`:
        config fields of this class)."""
        if is_lerobot_folder(directory):
            return cls(cls.config_class(path=str(directory), **(overrides or {})))
        return super().from_pretrained(directory, overrides)


def load_lerobot_policy(path: str | Path, **overrides: Any) -> LeRobotPolicy:
    """A `LeRobotPolicy` of a local LeRobot ``pretrained_model`` folder (`LeRobotPolicyConfig` fields
    such as ``device``, ``chunk_size`` or ``observation_map`` as keyword overrides)."""
    return LeRobotPolicy(LeRobotPolicyConfig(path=str(path), **overrides))

