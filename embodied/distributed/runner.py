"""`RayTrainer`: the training loop of `embodied.runner.trainer.Trainer`, with env workers,
rollout workers and learners as Ray actors (see `embodied.distributed.config` for the
placement modes).

One iteration:
  1. every rollout worker collects `algo.num_steps` decisions from its env workers (in
     parallel; pipelined placement overlaps stepping and inference inside each worker);
  2. the driver merges the rollouts along the env axis and the workers' observation
     statistics, and gives each learner rank an equal slice of the envs;
  3. the learners run the algorithm's update (DDP/FSDP average the gradients);
  4. weight sync: rank 0's state dict goes into Ray's object store once and every rollout
     worker loads it before the next rollout.
Evaluation (held-out seeds, `embodied.evaluate`) runs in the driver on the synced weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sims
from embodied.config import save_config, to_dict
from embodied.distributed.config import DistributedTrainConfig, check_config
from embodied.distributed.placement import plan_placement
from embodied.distributed.workers import (
    EnvWorker,
    LearnerWorker,
    RolloutWorker,
    merge_normalizer_states,
    normalizer_state,
    worker_env_vars,
)
from embodied.evaluate import evaluate_policy
from embodied.runner.checkpoint import save_checkpoint
from embodied.runner.logger import Logger
from embodied.runner.trainer import summarize_episodes
from policies import make_policy
from policies.base import Policy


def concat_envs(parts: list[Any]) -> Any:
    """Concatenate rollouts (S, N, ...) of several workers along the env axis (dim 1)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=1) if first.ndim > 1 else torch.cat(parts)
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=1)
    if isinstance(first, dict):
        return {k: concat_envs([p[k] for p in parts]) for k in first}
    raise TypeError(f"Cannot concatenate {type(first).__name__} along the env axis.")


def split_envs(tree: Any, parts: int) -> list[Any]:
    """`parts` equal slices of a rollout (S, N, ...) along the env axis (next values (N,) too)."""
    if isinstance(tree, dict):
        sliced = {k: split_envs(v, parts) for k, v in tree.items()}
        return [{k: v[i] for k, v in sliced.items()} for i in range(parts)]
    axis = 1 if tree.ndim > 1 else 0
    size = tree.shape[axis] // parts
    if isinstance(tree, np.ndarray):
        return [
            tree[:, i * size : (i + 1) * size] if axis else tree[i * size : (i + 1) * size]
            for i in range(parts)
        ]
    return list(torch.split(tree, size, dim=axis))


class RayTrainer:
    """Builds the actors from a `DistributedTrainConfig` and runs the loop."""

    def __init__(self, cfg: DistributedTrainConfig):
        import ray

        check_config(cfg)
        self.cfg = cfg
        d = cfg.distributed
        self.run_dir = Path(cfg.run_dir or f"runs/{cfg.name}")
        if (self.run_dir / "checkpoints" / "latest").exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; pick another run_dir/name.")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        self.plan = plan_placement(d)
        # Ray's CPUs are scheduling slots: a local Ray gets at least one per actor, or actors
        # that do not fit would wait forever.
        needed = sum(a.num_cpus for actors in self.plan.values() for a in actors)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            init: dict[str, Any] = {
                "include_dashboard": False,
                "runtime_env": {"env_vars": worker_env_vars()},
            }
            if d.address:
                init["address"] = d.address
            else:
                init["num_cpus"] = d.num_cpus or max(os.cpu_count() or 1, math.ceil(needed))
            ray.init(**init)
        available = ray.cluster_resources().get("CPU", 0.0)
        if available < needed:
            raise ValueError(
                f"The Ray cluster has {available:g} CPUs; the run's {sum(map(len, self.plan.values()))} actors need "
                f"{needed:g} (distributed.cpus_per_actor={d.cpus_per_actor:g}). Lower cpus_per_actor or raise num_cpus."
            )
        env_cfg = dataclasses.replace(cfg.env, seed=cfg.seed)
        per_worker = cfg.env.num_envs // d.num_env_workers
        threads = cfg.torch_threads or 1

        def actor(cls, placement):
            return ray.remote(cls).options(**placement.ray_options())

        self.env_workers = [
            actor(EnvWorker, p).remote(env_cfg, p.index * per_worker, per_worker, p.device, threads)
            for p in self.plan["env"]
        ]
        per_rollout = d.num_env_workers // d.num_rollout_workers
        pipelined = d.placement == "pipelined"
        self.rollout_workers = [
            actor(RolloutWorker, p).remote(
                cfg,
                self.env_workers[p.index * per_rollout : (p.index + 1) * per_rollout],
                pipelined,
                p.device,
            )
            for p in self.plan["rollout"]
        ]
        # A local env gives the learners an example observation (sizes of the policy's inputs).
        probe = sims.make(dataclasses.replace(env_cfg, num_envs=1))
        obs_example, action_dim = probe.reset(seed=cfg.seed), probe.action_dim
        probe.close()
        self.learners = [
            actor(LearnerWorker, p).remote(
                cfg, obs_example, action_dim, p.index, d.num_learners, p.device
            )
            for p in self.plan["learner"]
        ]
        master = ray.get(self.learners[0].address.remote())
        ray.get([learner.setup.remote(*master) for learner in self.learners])
        self.policy: Policy = make_policy(
            cfg.policy, obs_example, action_dim
        )  # the driver's copy, for eval
        self.normalizer = normalizer_state(self.policy)
        self._sync_weights()
        self.iteration = 0
        self.env_steps = 0
        self.wall_time = 0.0

    def _sync_weights(self) -> None:
        """Learner rank 0 -> object store -> every rollout worker (and the driver's copy)."""
        import ray

        refs = [learner.weights.remote() for learner in self.learners]  # a collective under FSDP
        weights = refs[0]
        ray.get([worker.set_weights.remote(weights) for worker in self.rollout_workers] + refs[1:])
        self.policy.load_state_dict(ray.get(weights))

    def step(self) -> dict[str, float]:
        """One iteration: rollouts, update, weight sync. Returns its metrics."""
        import ray

        start = time.perf_counter()
        results = ray.get([worker.collect.remote() for worker in self.rollout_workers])
        collect_seconds = time.perf_counter() - start
        self.normalizer = merge_normalizer_states(
            self.normalizer, [r["normalizer"] for r in results]
        )
        rollout = concat_envs([r["rollout"] for r in results])
        next_value = torch.cat([r["next_value"] for r in results])
        n = self.cfg.distributed.num_learners
        parts, values = split_envs(rollout, n), split_envs(next_value, n)
        per_rank = ray.get(
            [
                learner.update.remote(parts[i], values[i], self.normalizer, self.env_steps / max(self.cfg.total_env_steps, 1))
                for i, learner in enumerate(self.learners)
            ]
        )
        update_seconds = time.perf_counter() - start - collect_seconds
        self._sync_weights()
        steps = int(sum(m["env_steps"] for m in per_rank))
        self.iteration += 1
        self.env_steps += steps
        seconds = time.perf_counter() - start
        self.wall_time += seconds
        metrics = {
            f"train/{k}": float(np.mean([m[k] for m in per_rank]))
            for k in per_rank[0]
            if k != "env_steps"
        }
        episodes = [e for r in results for e in r["episodes"]]
        if episodes:
            metrics |= summarize_episodes(episodes, "rollout")
        metrics["perf/env_steps_per_s"] = steps / seconds
        metrics["perf/collect_s"] = collect_seconds
        metrics["perf/update_s"] = update_seconds
        metrics["time/wall_s"] = self.wall_time
        return metrics

    def train(self, stop_after: int | None = None) -> dict[str, Any]:
        """Run to `total_env_steps` (or `stop_after` iterations); returns the final evaluation
        (empty when stopped early)."""
        cfg = self.cfg
        logger = Logger(
            self.run_dir,
            cfg.log,
            cfg.total_env_steps,
            to_dict(cfg),
            self.env_steps,
            step_key="env_steps",
        )
        last_eval: dict[str, Any] = {}
        try:
            while self.env_steps < cfg.total_env_steps and (
                stop_after is None or self.iteration < stop_after
            ):
                metrics = self.step()
                if (
                    cfg.eval.every
                    and self.iteration % cfg.eval.every == 0
                    and self.env_steps < cfg.total_env_steps
                ):
                    last_eval = self.evaluate()
                    metrics |= {
                        f"eval/{k}": v for k, v in last_eval.items() if isinstance(v, (int, float))
                    }
                logger.log(self.env_steps, metrics)
                figures = {
                    "it": self.iteration,
                    "steps/s": metrics["perf/env_steps_per_s"],
                    "success": metrics.get("rollout/success_rate", float("nan")),
                }
                if last_eval:
                    figures["eval"] = last_eval["success_rate"]
                logger.progress(self.env_steps, figures)
            if self.env_steps >= cfg.total_env_steps:
                last_eval = self.evaluate()
                (self.run_dir / "eval.json").write_text(
                    json.dumps(
                        last_eval | {"env_steps": self.env_steps, "wall_s": self.wall_time},
                        indent=2,
                    )
                )
                logger.write(
                    f"final eval: success {last_eval['success_rate']:.1%} over {last_eval['episodes']} episodes; "
                    f"{self.env_steps} env steps, {self.wall_time:.0f} s"
                )
                self.save()
        finally:
            logger.close()
        return last_eval

    def evaluate(self) -> dict[str, Any]:
        cfg = self.cfg
        return evaluate_policy(
            self.policy, cfg.env, cfg.eval.episodes, cfg.eval.seed, cfg.eval.deterministic
        )

    def save(self) -> Path:
        """The policy (Hugging Face layout, loadable by `embodied eval`) and the counters. A
        distributed run is not resumable from it (the env workers' states are not saved)."""
        import ray

        state = {
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "wall_time": self.wall_time,
            "algo": ray.get(self.learners[0].algo_state.remote()),
        }
        return save_checkpoint(
            self.run_dir, self.iteration, self.policy, state, self.cfg.checkpoint.keep_last
        )

    def close(self) -> None:
        import ray

        ray.get([learner.close.remote() for learner in self.learners])
        for handle in self.learners + self.rollout_workers + self.env_workers:
            ray.kill(handle)
        if self._owns_ray:
            ray.shutdown()
