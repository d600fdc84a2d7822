"""From a `DistributedConfig` to each actor's resources: Ray options and a torch device."""

from __future__ import annotations

import dataclasses
from typing import Any

from embodied.distributed.config import COMPONENTS, DistributedConfig


@dataclasses.dataclass
class ActorPlacement:
    """Where one actor runs. `gpu_ids` pins it to those GPUs of its node (CUDA_VISIBLE_DEVICES);
    `num_gpus` is what Ray reserves for it (a fraction when actors share a GPU)."""

    component: str
    index: int
    num_cpus: float
    num_gpus: float = 0.0
    gpu_ids: tuple[int, ...] = ()

    @property
    def device(self) -> str:
        """The actor's torch device: "cuda" (its first visible GPU) or "cpu"."""
        return "cuda" if self.num_gpus > 0 else "cpu"

    def ray_options(self) -> dict[str, Any]:
        """Keyword arguments for `ActorClass.options(...)`."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.gpu_ids:
            options["runtime_env"] = {
                "env_vars": {
                    "CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpu_ids)),
                    "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",  # keep our ids
                }
            }
        return options


def plan_placement(cfg: DistributedConfig) -> dict[str, list[ActorPlacement]]:
    """Every actor's placement, by component ("env", "rollout", "learner").

    Pinned GPUs (`cfg.gpus`): the actors of a component take its GPUs round-robin; several
    actors on one GPU share it (Ray reserves 1 / sharers each). Collocated placement puts every
    component on the union of the listed GPUs. `cfg.gpus_per_actor`: Ray reserves that many
    GPUs per actor and picks them. Neither: CPU only.
    """
    counts = {
        "env": cfg.num_env_workers,
        "rollout": cfg.num_rollout_workers,
        "learner": cfg.num_learners,
    }
    plan: dict[str, list[ActorPlacement]] = {
        c: [ActorPlacement(c, i, cfg.cpus_per_actor) for i in range(counts[c])] for c in COMPONENTS
    }
    if cfg.gpus_per_actor:
        for component, per_actor in cfg.gpus_per_actor.items():
            for actor in plan[component]:
                actor.num_gpus = per_actor
        return plan
    if not cfg.gpus:
        return plan
    if cfg.placement == "collocated":
        shared = sorted({gpu for ids in cfg.gpus.values() for gpu in ids})
        mapping = {c: shared for c in COMPONENTS}
    else:
        missing = [c for c in COMPONENTS if not cfg.gpus.get(c)]
        if missing:
            raise ValueError(
                f"{cfg.placement} placement with pinned GPUs needs ids for every component; missing: {', '.join(missing)}."
            )
        mapping = {c: list(cfg.gpus[c]) for c in COMPONENTS}
    sharers: dict[int, int] = {}
    for component in COMPONENTS:
        ids = mapping[component]
        for actor in plan[component]:
            gpu = ids[actor.index % len(ids)]
            actor.gpu_ids = (gpu,)
            sharers[gpu] = sharers.get(gpu, 0) + 1
    for component in COMPONENTS:
        for actor in plan[component]:
            actor.num_gpus = round(1.0 / sharers[actor.gpu_ids[0]], 4)
    return plan
