"""RGB frames/s of the PickCube scene with 256 envs: the tiled batch renderer against one
`mujoco.Renderer` per env, at identical visual settings, with and without shadows.

    uv run python -m benchmarks.render_throughput [--quick] [--processes P]

All renderers draw the same batch states (the envs after a few random steps), from the front
camera, at 64x64 and 128x128:

- ``tiled``: `TiledRenderer` with ``num_processes=P`` (default: one per CPU core), the batch
  renderer as a CPU user runs it: this process and P-1 render processes draw shares of the envs
  (on Mesa's llvmpipe one process's GL work is serialized; `sims/mujoco/render.py`);
- ``tiled_1proc``: the same renderer in this process only;
- ``naive``: `NaiveRenderer`, one `mujoco.Renderer` per env;
- ``tiled_unculled`` (without shadows only: with shadows nothing is culled): ``tiled`` drawing
  every geom (``culling=False``), to show what skipping the geoms a camera cannot see saves
  (`sims/mujoco/culling.py`; the images are bit-identical).

The machine is shared and noisy, so the renderers take turns: each round times one call of each
(``--rounds``), and the rates are the medians over rounds. ``--quick`` draws 64 envs at 64x64
only, in 3 rounds. Last line:
``RESULT tiled_vs_naive_64=<ratio>`` (64x64, no shadows, ``tiled`` against ``naive``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sims  # noqa: E402
from benchmarks.common import machine_info, write_result  # noqa: E402
from sims.mujoco.env import MujocoBatchedEnv  # noqa: E402
from sims.mujoco.render import NaiveRenderer, RenderConfig, TiledRenderer  # noqa: E402


def interleaved_rates(renderers: dict, render_args: tuple, images: int, rounds: int) -> dict[str, float]:
    """Median images/s of each renderer over `rounds` rounds in which each renders once in turn."""
    for r in renderers.values():
        r.render(*render_args)  # warm-up: GL state, shader variants, shared memory
    rates: dict[str, list[float]] = {name: [] for name in renderers}
    for _ in range(rounds):
        for name, r in renderers.items():
            start = time.perf_counter()
            r.render(*render_args)
            rates[name].append(images / (time.perf_counter() - start))
    return {name: float(np.median(v)) for name, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="64 envs, 64x64 only, 3 rounds: under a minute")
    parser.add_argument("--num-envs", type=int, default=None, help="default: 256 (--quick: 64)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="render processes of the tiled renderer, this one included")
    parser.add_argument("--rounds", type=int, default=None, help="default: 9 (--quick: 3)")
    args = parser.parse_args()
    n = args.num_envs or (64 if args.quick else 256)
    rounds = args.rounds or (3 if args.quick else 9)
    sizes = (64,) if args.quick else (64, 128)
    machine = machine_info()
    env = sims.make("PickCube", num_envs=n)
    assert isinstance(env, MujocoBatchedEnv)  # sims.make's default backend
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        env.step(torch.rand(n, env.action_dim, generator=gen) * 2 - 1)

    rows = []
    print(f"{'size':>7} {'shadows':>8} {'tiled img/s':>12} {'1-proc img/s':>13} {'naive img/s':>12} "
          f"{'ratio':>6} {'1-proc ratio':>13} {'unculled img/s':>15} {'culling gain':>13}")
    for size in sizes:
        naive = NaiveRenderer(env.model, n, ("front",), RenderConfig(width=size, height=size))
        for shadows in (False, True):
            naive.set_shadows(shadows)
            cfg = RenderConfig(width=size, height=size, shadows=shadows)
            tiled = {
                "tiled": TiledRenderer(env.model, n, ("front",),
                                       dataclasses.replace(cfg, num_processes=args.processes)),
                "tiled_1proc": TiledRenderer(env.model, n, ("front",), cfg),
            }
            if not shadows:  # with shadows the renderer culls nothing
                tiled["tiled_unculled"] = TiledRenderer(
                    env.model, n, ("front",),
                    dataclasses.replace(cfg, num_processes=args.processes, culling=False))
            try:
                rates = interleaved_rates(tiled | {"naive": naive}, (env.batch,), n, rounds)
            finally:
                for r in tiled.values():
                    r.close()
            row = {"size": size, "shadows": shadows,
                   **{f"{name}_images_per_s": rate for name, rate in rates.items()},
                   "ratio": rates["tiled"] / rates["naive"],
                   "ratio_1proc": rates["tiled_1proc"] / rates["naive"]}
            unculled = rates.get("tiled_unculled")
            if unculled:
                row["culling_gain"] = rates["tiled"] / unculled
            rows.append(row)
            print(f"{size:>4}x{size:<3}{shadows!s:>8} {rates['tiled']:>12.0f} {rates['tiled_1proc']:>13.0f} "
                  f"{rates['naive']:>12.0f} {row['ratio']:>6.2f} {row['ratio_1proc']:>13.2f} "
                  + (f"{unculled:>15.0f} {row['culling_gain']:>13.2f}" if unculled else f"{'-':>15} {'-':>13}"))
        naive.close()
    env.close()
    headline = next(r for r in rows if r["size"] == 64 and not r["shadows"])
    path = write_result(
        "render_throughput" + ("_quick" if args.quick else ""),
        {"num_envs": n, "camera": "front", "quick": args.quick, "processes": args.processes,
         "rounds": rounds, "rows": rows, "tiled_vs_naive_64": headline["ratio"],
         "tiled_1proc_vs_naive_64": headline["ratio_1proc"]},
        machine,
    )
    print(f"wrote {path}")
    print(f"RESULT tiled_vs_naive_64={headline['ratio']:.2f}")


if __name__ == "__main__":
    main()
