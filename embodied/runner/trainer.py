"""`embodied train`: rollout -> update -> log -> evaluate -> checkpoint, resumable exactly."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sims
from embodied.algos import ALGOS, AlgoConfig
from embodied.algos.ppo import PPOConfig
from embodied.config import load_config, plain, save_config, to_dict
from embodied.evaluate import evaluate_policy
from embodied.runner.checkpoint import latest_checkpoint, save_checkpoint
from embodied.runner.logger import LogConfig, Logger
from embodied.runner.rollout import EpisodeTracker
from embodied.runner.stages import StagedEnv
from policies import MLPPolicyConfig, make_policy, observed_sizes
from policies.base import POLICIES, Policy, PolicyConfig
from sims.core import EnvConfig


@dataclasses.dataclass
class EvalConfig:
    every: int = 10  # iterations between evaluations; 0: only at the end
    episodes: int = 64
    seed: int = 1_000_000  # held out: training seeds are cfg.seed
    deterministic: bool = True


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 10  # iterations
    keep_last: int = 3


@dataclasses.dataclass
class RolloutConfig:
    """How the rollout places its work: "collocated" (decide for the stages, then step them, one
    after another) or "pipelined" (a stage's physics and rendering overlap the policy's
    inference on the next stage); both split the envs into `stages` equal slices and give
    identical rollouts for the same seeds."""

    mode: str = "collocated"
    stages: int = 1  # pipelined needs >= 2


ROLLOUT_MODES = ("collocated", "pipelined")


@dataclasses.dataclass
class TrainConfig:
    name: str = "run"
    seed: int = 0
    total_env_steps: int = 500_000
    run_dir: str = ""  # default: runs/<name>
    torch_threads: int = 0  # 0: torch's default
    init_from: str = ""  # start from a saved policy folder or a run directory's latest checkpoint
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    policy: PolicyConfig = dataclasses.field(default_factory=MLPPolicyConfig)
    algo: AlgoConfig = dataclasses.field(default_factory=PPOConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)


def summarize_episodes(episodes: list[dict], prefix: str) -> dict[str, float]:
    """Mean success, return and length of finished episodes, as `prefix/...` scalars."""
    return {
        f"{prefix}/success_rate": float(np.mean([e["success"] for e in episodes])),
        f"{prefix}/return": float(np.mean([e["return"] for e in episodes])),
        f"{prefix}/episode_length": float(np.mean([e["length"] for e in episodes])),
        f"{prefix}/episodes": float(len(episodes)),
    }


def make_rollout_env(env_cfg: EnvConfig, rollout: RolloutConfig) -> sims.BatchedEnv:
    """The training env: one batch, or `rollout.stages` stages of it."""
    if rollout.mode not in ROLLOUT_MODES:
        raise ValueError(f"rollout.mode {rollout.mode!r} is not one of {', '.join(ROLLOUT_MODES)}.")
    if rollout.mode == "pipelined" and rollout.stages < 2:
        raise ValueError(f"rollout.mode pipelined needs rollout.stages >= 2; got {rollout.stages}.")
    if rollout.stages == 1:
        return sims.make(env_cfg)
    return StagedEnv(env_cfg, rollout.stages, pipelined=rollout.mode == "pipelined")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_policy(path: str | Path, policy_cfg: Any, adapters: bool = True) -> Policy:
    """The policy saved at `path`: its architecture from the folder, how it samples (temperature,
    noise, deterministic readout) and, with `adapters` (training), its adapters (LoRA, a state
    critic) from `policy_cfg`, a recipe's `policy`; an evaluation reads only the former."""
    policy_cls = POLICIES[policy_cfg.kind]
    names = (*policy_cls.runtime_fields, *(policy_cls.adapter_fields if adapters else ()))
    fields = {f: getattr(policy_cfg, f) for f in names}
    return Policy.from_pretrained(path, overrides=fields)


def check_fixed_fields(recipe: Any, policy: Policy, source: str) -> None:
    """Raise when the recipe's `policy` sets a field away from its default to a value the loaded
    `policy` does not have, other than the fields a loaded policy takes from the recipe (runtime
    and adapter fields): a setting that would otherwise be silently ignored (a run from an SFT
    checkpoint cannot switch its likelihood or chunk size)."""
    saved, cls = policy.config, type(policy)
    if not (dataclasses.is_dataclass(recipe) and dataclasses.is_dataclass(saved)):
        return
    taken = {"kind", *cls.runtime_fields, *cls.adapter_fields}
    saved_values = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
    conflicts = []
    for field in dataclasses.fields(recipe):
        if field.name in taken or field.name not in saved_values:
            continue
        asked = getattr(recipe, field.name)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue
        if plain(asked) != plain(default) and plain(asked) != plain(saved_values[field.name]):
            conflicts.append(f"{field.name} (saved {saved_values[field.name]!r}, asked {asked!r})")
    if conflicts:
        raise ValueError(
            f"{source}: the saved policy fixes {', '.join(conflicts)}, which a run from a saved policy cannot "
            f"change (only {', '.join(sorted(taken - {'kind'}))} can). Drop them from the config, or train a "
            "policy with them from scratch."
        )


class Trainer:
    """Builds env, policy and algorithm from a TrainConfig and runs the loop."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir or f"runs/{cfg.name}")
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.env = make_rollout_env(dataclasses.replace(cfg.env, seed=cfg.seed), cfg.rollout)
        self.obs = self.env.reset(seed=cfg.seed)
        self.policy: Policy = self._build_policy()
        self.algo = ALGOS[cfg.algo.name](self.policy, cfg.algo)
        self.tracker = EpisodeTracker(self.env.num_envs, self.env.device, sources=[cfg.env.task] * self.env.num_envs)
        self.iteration = 0
        self.env_steps = 0
        self.wall_time = 0.0
        if resume:
            self._restore(latest_checkpoint(self.run_dir))
        else:
            if (self.run_dir / "checkpoints" / "latest").exists():
                raise FileExistsError(
                    f"{self.run_dir} already holds a run; resume it with --resume {self.run_dir} or pick another run_dir/name."
                )
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")

    def _build_policy(self) -> Policy:
        cfg = self.cfg
        if not cfg.init_from:
            return make_policy(cfg.policy, self.obs, self.env.action_dim)
        path = Path(cfg.init_from)
        if (path / "checkpoints").is_dir():
            path = latest_checkpoint(path) / "policy"
        saved_kind = json.loads((path / "config.json").read_text()).get("kind") if (path / "config.json").is_file() else None
        if saved_kind is not None and saved_kind != cfg.policy.kind:
            raise ValueError(f"init_from {cfg.init_from} holds a {saved_kind!r} policy; this config asks for {cfg.policy.kind!r}.")
        policy = load_policy(path, observed_sizes(cfg.policy, self.obs, self.env.action_dim))
        check_fixed_fields(cfg.policy, policy, f"init_from {cfg.init_from}")
        if policy.chunk_size and getattr(policy.config, "action_dim", self.env.action_dim) != self.env.action_dim:
            raise ValueError(f"init_from {cfg.init_from} emits {policy.config.action_dim}-dim actions; the env takes {self.env.action_dim}.")
        return policy

    @property
    def progress_steps(self) -> int:
        """The run's x axis: env steps, or gradient updates for algorithms without env."""
        return self.env_steps if self.algo.uses_env else self.algo.updates

    def finished(self) -> bool:
        return self.env_steps >= self.cfg.total_env_steps if self.algo.uses_env else self.algo.finished()

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> Trainer:
        """Resume the run in `run_dir` from its latest checkpoint, with its saved config."""
        run_dir = Path(run_dir)
        latest_checkpoint(run_dir)  # a clear error when it is not a run
        cfg = load_config(TrainConfig, run_dir / "config.yaml")
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
        return cls(cfg, resume=True)

    # ------------------------------------------------------------------ loop
    def train(self, stop_after: int | None = None) -> dict[str, Any]:
        """Run to `total_env_steps` (or `stop_after` more iterations); returns the final eval."""
        cfg = self.cfg
        total = cfg.total_env_steps if self.algo.uses_env else self.algo.planned_updates()
        logger = Logger(self.run_dir, cfg.log, total, to_dict(cfg), self.progress_steps,
                        step_key="env_steps" if self.algo.uses_env else "updates")
        last_eval: dict[str, Any] = {}
        stop_iteration = None if stop_after is None else self.iteration + stop_after
        try:
            while not self.finished() and self.iteration != stop_iteration:
                start = time.perf_counter()
                rollout, self.obs, next_value = self.algo.collect(self.env, self.obs, self.tracker)
                collect_seconds = time.perf_counter() - start
                batch = self.algo.prepare(rollout, next_value)
                self.algo.progress = self.env_steps / max(self.cfg.total_env_steps, 1)
                metrics = self.algo.update(batch, self.iteration)
                self.iteration += 1
                steps = batch["env_steps"]
                self.env_steps += steps
                seconds = time.perf_counter() - start
                self.wall_time += seconds
                metrics = {f"train/{k}": v for k, v in metrics.items()}
                metrics.update(self._episode_metrics())
                metrics["perf/env_steps_per_s"] = steps / seconds
                metrics["perf/collect_fraction"] = collect_seconds / seconds
                metrics["time/wall_s"] = self.wall_time
                if cfg.eval.every and self.iteration % cfg.eval.every == 0 and not self.finished():
                    last_eval = self.evaluate(video=bool(cfg.log.video_every) and self.iteration % cfg.log.video_every == 0)
                    metrics.update({f"eval/{k}": v for k, v in last_eval.items() if isinstance(v, (int, float))})
                logger.log(self.progress_steps, metrics)
                figures: dict[str, float] = {"it": self.iteration}
                if self.algo.uses_env:
                    figures |= {"steps/s": metrics["perf/env_steps_per_s"],
                                "success": metrics.get("rollout/success_rate", float("nan")),
                                "return": metrics.get("rollout/return", float("nan"))}
                else:
                    figures |= {"loss": metrics["train/loss"]}
                if last_eval:
                    figures["eval"] = last_eval["success_rate"]
                logger.progress(self.progress_steps, figures)
                if cfg.checkpoint.every and self.iteration % cfg.checkpoint.every == 0:
                    self.save()
            if self.finished():
                final = self.evaluate(video=cfg.log.final_video)
                counters = {"env_steps": self.env_steps, "wall_s": self.wall_time}
                if not self.algo.uses_env:
                    counters["updates"] = self.algo.updates
                (self.run_dir / "eval.json").write_text(json.dumps(final | counters, indent=2))
                logger.log(self.progress_steps, {f"eval/{k}": v for k, v in final.items() if isinstance(v, (int, float))})
                logger.write(
                    f"final eval: success {final['success_rate']:.1%} (95% CI {final['success_ci95'][0]:.1%}-"
                    f"{final['success_ci95'][1]:.1%}) over {final['episodes']} episodes; "
                    f"{self.progress_steps} {'env steps' if self.algo.uses_env else 'updates'}, {self.wall_time:.0f} s"
                )
                self.save()
                last_eval = final
        finally:
            logger.close()
        return last_eval

    def _episode_metrics(self) -> dict[str, float]:
        episodes = self.tracker.pop()
        if not episodes:
            return {}
        metrics = summarize_episodes(episodes, "rollout")
        for source in sorted({e["source"] for e in episodes} - {""}):
            metrics |= summarize_episodes([e for e in episodes if e["source"] == source], f"rollout/{source}")
        return metrics

    def evaluate(self, video: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        path = self.run_dir / "videos" / f"eval_{self.iteration:06d}.mp4" if video else None
        return evaluate_policy(self.algo.acting_policy, cfg.env, cfg.eval.episodes, cfg.eval.seed, cfg.eval.deterministic, video_path=path)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        state = {
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "wall_time": self.wall_time,
            "algo": self.algo.state_dict(),
            "env_state": self.env.get_state(),
            "env_rng": self.env.get_rng_state(),
            "tracker": self.tracker.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
        }
        return save_checkpoint(self.run_dir, self.iteration, self.policy, state, self.cfg.checkpoint.keep_last)

    def _restore(self, path: Path) -> None:
        saved = Policy.from_pretrained(path / "policy")
        if type(saved) is not type(self.policy) or saved.config != self.policy.config:
            raise ValueError(f"Checkpoint {path} holds a {saved.kind} policy of another shape than this config builds.")
        self.policy.load_state_dict(saved.state_dict())
        state = torch.load(path / "trainer.pt", weights_only=False)
        self.iteration = state["iteration"]
        self.env_steps = state["env_steps"]
        self.wall_time = state["wall_time"]
        self.algo.load_state_dict(state["algo"])
        self.obs = self.env.set_state(state["env_state"])
        self.env.set_rng_state(state["env_rng"])
        self.tracker.load_state_dict(state["tracker"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
