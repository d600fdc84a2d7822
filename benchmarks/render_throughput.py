"""RGB frames/s of the PickCube scene with 256 envs: the tiled batch renderer against one
`mujoco.Renderer` per env, at identical visual settings, with and without shadows.

    uv run python benchmarks/render_throughput.py [--quick]

Both renderers draw the same batch states (the envs after a few random steps), from the
front camera, at 64x64 and 128x128. Last line: RESULT tiled_vs_naive_64=<ratio> (no shadows).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

import sims  # noqa: E402
from benchmarks.common import time_steps, write_result  # noqa: E402
from sims.mujoco.render import NaiveRenderer, RenderConfig, TiledRenderer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; under a minute")
    parser.add_argument("--num-envs", type=int, default=256)
    args = parser.parse_args()
    n = args.num_envs
    calls = 2 if args.quick else 6
    env = sims.make("PickCube", num_envs=n)
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        env.step(torch.rand(n, env.action_dim, generator=gen) * 2 - 1)

    rows = []
    print(f"{'size':>7} {'shadows':>8} {'tiled img/s':>12} {'naive img/s':>12} {'ratio':>6}")
    for size in (64, 128):
        for shadows in (False, True):
            cfg = RenderConfig(width=size, height=size, shadows=shadows)
            rates = {}
            for name, cls in (("tiled", TiledRenderer), ("naive", NaiveRenderer)):
                renderer = cls(env.model, n, ("front",), cfg)
                seconds = time_steps(lambda r=renderer: r.render(env.batch), steps=calls, warmup=1)
                renderer.close()
                rates[name] = n * calls / seconds
            ratio = rates["tiled"] / rates["naive"]
            rows.append({"size": size, "shadows": shadows, "tiled_images_per_s": rates["tiled"],
                         "naive_images_per_s": rates["naive"], "ratio": ratio})
            print(f"{size:>4}x{size:<3}{shadows!s:>8} {rates['tiled']:>12.0f} {rates['naive']:>12.0f} {ratio:>6.2f}")
    env.close()
    headline = next(r["ratio"] for r in rows if r["size"] == 64 and not r["shadows"])
    path = write_result("render_throughput", {"num_envs": n, "camera": "front", "quick": args.quick, "rows": rows,
                                              "tiled_vs_naive_64": headline})
    print(f"wrote {path}")
    print(f"RESULT tiled_vs_naive_64={headline:.2f}")


if __name__ == "__main__":
    main()
