"""``python -m embodied.distributed CONFIG.yaml [key=value ...]``: a distributed training run."""

from __future__ import annotations

import argparse
import json

from embodied.config import load_config
from embodied.distributed.config import DistributedTrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embodied.distributed", description=__doc__)
    parser.add_argument("config", help="a YAML recipe with a distributed: section")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. distributed.num_learners=2"
    )
    args = parser.parse_args(argv)
    cfg = load_config(DistributedTrainConfig, args.config, args.overrides)
    from embodied.distributed.runner import RayTrainer

    trainer = RayTrainer(cfg)
    try:
        final = trainer.train()
    finally:
        trainer.close()
    print(json.dumps({k: v for k, v in final.items() if isinstance(v, (int, float))}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
