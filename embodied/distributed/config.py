"""Configs of a distributed run and the placement of its components on GPUs.

A distributed run is a `TrainConfig` plus a ``distributed:`` section. Components:

- env workers: `num_env_workers` actors, each simulating ``env.num_envs / num_env_workers``
  envs (seeded as the same rows of one big batch, so the run sees the initial states a
  single-process run would);
- rollout workers: `num_rollout_workers` actors, each running the policy's inference for its
  share of the env workers (``num_env_workers / num_rollout_workers`` each);
- learners: `num_learners` actors in one torch.distributed group (DDP, or FSDP for models that
  do not fit one GPU); rank 0's weights go to the rollout workers after every update.

Placement modes:

- ``collocated``: every component shares the same GPUs (each actor a fraction of each);
  rollout and update alternate.
- ``disaggregated``: each component on its own GPUs (`gpus` lists disjoint ids per component);
  rollout and update alternate, and inference and physics alternate inside a rollout.
- ``pipelined``: disaggregated, and inside a rollout an env worker steps its envs while the
  rollout worker runs inference for the next env worker's envs.
"""

from __future__ import annotations

import dataclasses

from embodied.runner.trainer import TrainConfig

PLACEMENTS = ("collocated", "disaggregated", "pipelined")
STRATEGIES = ("ddp", "fsdp")
COMPONENTS = ("env", "rollout", "learner")


@dataclasses.dataclass
class DistributedConfig:
    placement: str = "disaggregated"
    num_env_workers: int = 2
    num_rollout_workers: int = 1
    num_learners: int = 1
    strategy: str = "ddp"  # learners' data parallelism: "ddp" or "fsdp" (sharded parameters)
    # GPU ids on one node per component, e.g. {env: [0], rollout: [1], learner: [2, 3]}
    # (collocated: one list under any name, or the same list for all). Empty: no GPU.
    gpus: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # Instead of pinned ids: GPUs per actor of a component, placed by Ray anywhere in the
    # cluster (several machines), e.g. {env: 0.5, rollout: 0.5, learner: 1}.
    gpus_per_actor: dict[str, float] = dataclasses.field(default_factory=dict)
    cpus_per_actor: float = 1.0
    address: str = (
        ""  # "": start a local Ray; "auto": join the running cluster; or "ray://host:10001"
    )
    num_cpus: int = 0  # CPUs of a local Ray (0: Ray counts them); actors fit into these
    dist_backend: str = ""  # torch.distributed backend: "" = nccl on GPUs, gloo on the CPU
    master_port: int = 0  # torch.distributed rendezvous port on learner 0's node (0: a free one)


@dataclasses.dataclass
class DistributedTrainConfig(TrainConfig):
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)


def check_config(cfg: DistributedTrainConfig) -> None:
    """Raise ValueError naming the problem for a config the runner cannot place."""
    d = cfg.distributed
    if d.placement not in PLACEMENTS:
        raise ValueError(
            f"distributed.placement {d.placement!r} is not one of {', '.join(PLACEMENTS)}."
        )
    if d.strategy not in STRATEGIES:
        raise ValueError(
            f"distributed.strategy {d.strategy!r} is not one of {', '.join(STRATEGIES)}."
        )
    for name in ("num_env_workers", "num_rollout_workers", "num_learners"):
        if getattr(d, name) < 1:
            raise ValueError(f"distributed.{name} must be >= 1; got {getattr(d, name)}.")
    if d.num_env_workers % d.num_rollout_workers:
        raise ValueError(
            f"distributed.num_env_workers ({d.num_env_workers}) must be a multiple of num_rollout_workers "
            f"({d.num_rollout_workers}): each rollout worker drives the same number of env workers."
        )
    if cfg.env.num_envs % (d.num_env_workers * d.num_learners):
        raise ValueError(
            f"env.num_envs ({cfg.env.num_envs}) must be a multiple of num_env_workers * num_learners "
            f"({d.num_env_workers} * {d.num_learners}) so every worker and learner gets equal envs."
        )
    if cfg.rollout.stages != 1 or cfg.rollout.mode != "collocated":
        raise ValueError(
            "Set distributed.placement instead of rollout.mode/stages in a distributed run."
        )
    if d.gpus and d.gpus_per_actor:
        raise ValueError(
            "Give distributed.gpus (pinned ids on one node) or gpus_per_actor (Ray places), not both."
        )
    for mapping in (d.gpus, d.gpus_per_actor):
        for component in mapping:
            if component not in COMPONENTS:
                raise ValueError(
                    f"distributed GPU mapping: unknown component {component!r}; valid: {', '.join(COMPONENTS)}."
                )
    if d.placement != "collocated" and d.gpus:
        used: dict[int, str] = {}
        for component, ids in d.gpus.items():
            for gpu in ids:
                if gpu in used:
                    raise ValueError(
                        f"GPU {gpu} is mapped to both {used[gpu]!r} and {component!r}; {d.placement} placement "
                        "gives each component its own GPUs (use placement: collocated to share them)."
                    )
                used[gpu] = component
