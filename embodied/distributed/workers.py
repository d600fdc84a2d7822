"""The three kinds of actor of a distributed run. Plain classes: the runner turns them into Ray
actors with `ray.remote(cls).options(...)`, and tests can build them in-process.

- `EnvWorker`: a `BatchedEnv` slice; runs chunks of actions (`rollout.run_chunk`).
- `RolloutWorker`: a policy copy driving some env workers through the single-process rollout
  code (`rollout.collect_rollout`), the env workers being the stages of a `RemoteEnv`.
- `LearnerWorker`: one rank of a torch.distributed group; the run's algorithm (PPO) updates
  the policy wrapped in DDP or FSDP, so gradients are averaged over the ranks.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, cast

import torch
from torch import nn

import sims
from embodied.algos import ALGOS
from embodied.runner.rollout import EpisodeTracker, collect_rollout, run_chunk
from policies import make_policy
from policies.base import Policy
from policies.normalizer import RunningNormalizer
from sims.core import EnvConfig, Obs


def to_device(tree: Any, device: torch.device | str) -> Any:
    """Move every tensor of a nested dict/list/tuple to `device` (other leaves unchanged)."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


def set_threads(torch_threads: int) -> None:
    if torch_threads:
        torch.set_num_threads(torch_threads)


def normalizer_state(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The running observation statistics of every `RunningNormalizer` in `policy`."""
    return {
        f"{name}.{buffer}": getattr(module, buffer).detach().cpu().clone()
        for name, module in policy.named_modules()
        if isinstance(module, RunningNormalizer)
        for buffer in ("mean", "var", "count")
    }


def merge_normalizer_states(
    previous: dict[str, torch.Tensor], workers: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Combine rollout workers' statistics that each started from `previous` and folded in
    their own observations: the result is the statistics of `previous`'s samples plus all the
    workers' new samples (exact, by sums and sums of squares in float64)."""
    if len(workers) == 1:
        return workers[0]
    merged: dict[str, torch.Tensor] = {}
    prefixes = {key.rsplit(".", 1)[0] for key in previous}
    for prefix in prefixes:
        c0 = previous[f"{prefix}.count"].double()
        m0, v0 = previous[f"{prefix}.mean"].double(), previous[f"{prefix}.var"].double()
        count, total, squares = c0.clone(), c0 * m0, c0 * (v0 + m0**2)
        for state in workers:
            ci = state[f"{prefix}.count"].double()
            mi, vi = state[f"{prefix}.mean"].double(), state[f"{prefix}.var"].double()
            count = count + (ci - c0)
            total = total + ci * mi - c0 * m0
            squares = squares + ci * (vi + mi**2) - c0 * (v0 + m0**2)
        mean = total / count
        merged[f"{prefix}.mean"] = mean.float()
        merged[f"{prefix}.var"] = (squares / count - mean**2).clamp_min(0.0).float()
        merged[f"{prefix}.count"] = count
    return merged


def load_normalizer_state(policy: nn.Module, state: dict[str, torch.Tensor]) -> None:
    modules = dict(policy.named_modules())
    for key, value in state.items():
        name, buffer = key.rsplit(".", 1)
        getattr(modules[name], buffer).copy_(value)


class EnvWorker:
    """Envs ``first_env_index .. first_env_index + num_envs - 1`` of the run's batch."""

    def __init__(
        self,
        env_cfg: EnvConfig,
        first_env_index: int,
        num_envs: int,
        device: str = "cpu",
        torch_threads: int = 1,
    ):
        set_threads(torch_threads)
        self.env = sims.make(
            dataclasses.replace(
                env_cfg, num_envs=num_envs, first_env_index=first_env_index, device=device
            )
        )

    def spec(self) -> dict[str, Any]:
        return {
            "num_envs": self.env.num_envs,
            "action_dim": self.env.action_dim,
            "max_episode_steps": self.env.max_episode_steps,
        }

    def reset(self, seed: int) -> Obs:
        return to_device(self.env.reset(seed=seed), "cpu")

    def run_chunk(self, actions: torch.Tensor) -> list[tuple]:
        """`rollout.run_chunk` on this worker's envs; the step results on the CPU."""
        return to_device(run_chunk(self.env, actions.to(self.env.device)), "cpu")

    def close(self) -> None:
        self.env.close()


class _Resolved:
    """A finished result with the `Future.result()` interface."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


class _RayResult:
    def __init__(self, ref: Any, device: torch.device):
        self.ref, self.device = ref, device

    def result(self) -> Any:
        import ray

        return to_device(ray.get(self.ref), self.device)


class RemoteEnv:
    """Env workers as the stages of one env, in the shape `collect_rollout` works stage by stage
    (`stages`, `submit`). `pipelined`: a submitted chunk runs on its worker while the caller
    goes on to the next stage's inference; otherwise each chunk is waited for at once."""

    def __init__(
        self, workers: list[Any], specs: list[dict], device: torch.device, pipelined: bool
    ):
        self.workers = workers
        self.stages = [_StageSpec(spec) for spec in specs]
        self.num_envs = sum(spec["num_envs"] for spec in specs)
        self.action_dim = specs[0]["action_dim"]
        self.device = device
        self.pipelined = True  # collect_rollout always submits; `overlap` decides whether to wait
        self.overlap = pipelined

    def submit(self, stage: int, fn: Any, actions: torch.Tensor) -> Any:
        if fn is not run_chunk:
            raise ValueError("RemoteEnv runs only rollout.run_chunk on its workers.")
        result = _RayResult(self.workers[stage].run_chunk.remote(actions.cpu()), self.device)
        return result if self.overlap else _Resolved(result.result())

    def reset(self, seed: int) -> Obs:
        import ray

        from embodied.runner.rollout import concat_observations

        parts = ray.get([w.reset.remote(seed) for w in self.workers])
        return to_device(concat_observations(parts), self.device)


@dataclasses.dataclass
class _StageSpec:
    spec: dict

    @property
    def num_envs(self) -> int:
        return self.spec["num_envs"]


class RolloutWorker:
    """Inference for its env workers: the single-process rollout loop on a `RemoteEnv`."""

    def __init__(self, cfg: Any, env_workers: list[Any], pipelined: bool, device: str = "cpu"):
        import ray

        set_threads(cfg.torch_threads or 1)
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.device = torch.device(device)
        specs = ray.get([w.spec.remote() for w in env_workers])
        self.env = RemoteEnv(env_workers, specs, self.device, pipelined)
        self.obs = self.env.reset(cfg.seed)
        self.policy: Policy = make_policy(cfg.policy, self.obs, self.env.action_dim).to(self.device)
        self.tracker = EpisodeTracker(
            self.env.num_envs, self.device, sources=[cfg.env.task] * self.env.num_envs
        )

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Weight sync: the learner's full state dict (parameters and normaliser statistics)."""
        self.policy.load_state_dict(to_device(state, self.device))

    def weights(self) -> dict[str, torch.Tensor]:
        """This worker's policy state dict on the CPU (to check a sync)."""
        return to_device(self.policy.state_dict(), "cpu")

    def collect(self) -> dict[str, Any]:
        """One rollout of `algo.num_steps` decisions per env.

        Returns {rollout, next_value, episodes (finished since the last call), normalizer}."""
        algo = self.cfg.algo
        rollout, self.obs, next_value = collect_rollout(
            self.env, self.policy, self.obs, algo.num_steps, algo.gamma, self.tracker
        )
        return {
            "rollout": to_device(rollout, "cpu"),
            "next_value": next_value.cpu(),
            "episodes": self.tracker.pop(),
            "normalizer": normalizer_state(self.policy),
        }


class _EvaluateAt(nn.Module):
    """`policy.evaluate_at` as `forward`, so DDP/FSDP see (and synchronise) the update's calls."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, obs, actions, extras, level):
        return self.policy.evaluate_at(obs, actions, extras, level)


class DataParallelPolicy:
    """The policy as the algorithm sees it: `evaluate_at` runs through the DDP/FSDP wrapper and
    `parameters()` are the wrapper's (sharded under FSDP); everything else is the policy's."""

    def __init__(self, policy: Policy, wrapped: nn.Module):
        self.__dict__["policy"] = policy
        self.__dict__["wrapped"] = wrapped

    def evaluate_at(self, obs, actions, extras, level):
        return self.wrapped(obs, actions, extras, level)

    def parameters(self):
        return self.wrapped.parameters()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["policy"], name)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class LearnerWorker:
    """Rank `rank` of `world_size` learners. Every rank builds the same policy (same seed; DDP
    also broadcasts rank 0's weights), takes a slice of the envs of each rollout and runs the
    algorithm's update on it; DDP/FSDP average the gradients across ranks."""

    def __init__(
        self,
        cfg: Any,
        obs_example: Obs,
        action_dim: int,
        rank: int,
        world_size: int,
        device: str = "cpu",
    ):
        set_threads(cfg.torch_threads or 1)
        torch.manual_seed(cfg.seed)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.policy: Policy = make_policy(
            cfg.policy, to_device(obs_example, self.device), action_dim
        ).to(self.device)
        self.iteration = 0

    def address(self) -> tuple[str, int]:
        """(ip, free port) for rank 0's rendezvous."""
        import ray

        port = self.cfg.distributed.master_port or free_port()
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group and wrap the policy (DDP or FSDP); build the algorithm."""
        import torch.distributed as dist

        d = self.cfg.distributed
        backend = d.dist_backend or ("nccl" if self.device.type == "cuda" else "gloo")
        dist.init_process_group(
            backend,
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=self.rank,
            world_size=self.world_size,
        )
        module = _EvaluateAt(self.policy)
        if d.strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world_size,))
            wrapped = cast(nn.Module, fully_shard(module, mesh=mesh))  # the module, its class extended
        else:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(module, device_ids=device_ids)
        self.wrapped = wrapped
        policy = cast(Policy, DataParallelPolicy(self.policy, wrapped))  # a Policy by delegation
        self.algo = ALGOS[self.cfg.algo.name](policy, self.cfg.algo)

    def update(
        self, rollout: dict[str, Any], next_value: torch.Tensor, normalizer: dict[str, torch.Tensor],
        progress: float = 0.0,
    ) -> dict[str, float]:
        """One update on this rank's slice of the rollout (`progress`: the fraction of the run's
        env-step budget spent before it); returns the algorithm's metrics and ``env_steps`` (of
        this slice)."""
        load_normalizer_state(self.policy, normalizer)
        batch = self.algo.prepare(to_device(rollout, self.device), next_value.to(self.device))
        self.algo.progress = progress
        metrics = self.algo.update(batch, self.iteration)
        self.iteration += 1
        metrics["env_steps"] = float(batch["env_steps"])
        return metrics

    def weights(self) -> dict[str, torch.Tensor] | None:
        """The full policy state dict on the CPU (rank 0; None on other ranks). A collective
        under FSDP: call it on every rank."""
        if self.cfg.distributed.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            full = cast(dict[str, torch.Tensor], get_model_state_dict(  # a module's: only tensors
                self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            ))
            state = {k.removeprefix("policy."): v.detach().cpu().clone() for k, v in full.items()}
        else:
            state = {k: v.detach().cpu().clone() for k, v in self.policy.state_dict().items()}
        return state if self.rank == 0 else None

    def algo_state(self) -> dict[str, Any]:
        return self.algo.state_dict()

    def parameter_checksum(self) -> float:
        """Sum of this rank's parameters: equal on every rank when DDP keeps them in sync (under
        FSDP each rank holds only its shard)."""
        return (
            sum(float(p.detach().double().sum()) for p in self.policy.parameters())
            if self.cfg.distributed.strategy == "ddp"
            else float("nan")
        )

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def worker_env_vars() -> dict[str, str]:
    """Environment for the actors: the caller's rendering backend and thread limits."""
    keys = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "HF_HOME", "OMP_NUM_THREADS")
    return {k: os.environ[k] for k in keys if k in os.environ}
