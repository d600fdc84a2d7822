"""Deployment latency: observation-to-action time of a local policy against the same policy
behind `embodied serve` over loopback, and the control loop's timing jitter at 20 and 50 Hz.

- ``latency``: one robot observation (Reach, state: 25 + 6 floats; and the same with two
  64x64 RGB frames added, to show the payload's cost) to one action chunk, `--requests`
  times after a warm-up, for (a) `LocalPolicy.infer` in this process and (b)
  `PolicyClient.infer` to a server in a separate process (``python -m embodied.cli serve``
  on 127.0.0.1). ``server_overhead_ms`` is the difference of the medians (state case).
- ``jitter``: `real_robot.deploy.deploy` driving a `SimRobot` (Reach) behind the safety
  layer with the local policy at 20 and 50 Hz for `--loop-steps` ticks; jitter is
  |actual tick start - scheduled tick start| per tick (p50 / p99), and the overruns (ticks
  more than a period late, after which the loop re-anchors its schedule).

The policy is `--policy` (a run, checkpoint or policy folder) or, by default, an untrained MLP
of the Reach recipe's shape (latency does not depend on the weights; an untrained policy also
keeps each episode running to its step limit).

Writes benchmarks/results/deploy_latency.json (``--quick``: fewer requests and ticks,
deploy_latency_quick.json) and ends with
``RESULT server_overhead_ms=<p50> jitter_p99_ms_50hz=<value>``.

    python benchmarks/deploy_latency.py [--quick] [--policy RUN_DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import machine_info, write_result  # noqa: E402


def untrained_policy(directory: Path) -> Path:
    from policies.mlp import MLPPolicy, MLPPolicyConfig

    torch.manual_seed(0)
    MLPPolicy(MLPPolicyConfig(obs_dim=31, action_dim=7, hidden_sizes=(64, 64))).save_pretrained(directory)
    return directory


def observation(images: bool) -> dict:
    rng = np.random.default_rng(0)
    obs = {
        "observation.state": rng.standard_normal(25).astype(np.float32),
        "observation.environment_state": rng.standard_normal(6).astype(np.float32),
        "task": "reach the green target",
    }
    if images:
        for camera in ("front", "wrist"):
            obs[f"observation.images.{camera}"] = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return obs


def timed(fn, obs: dict, requests: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn(obs)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        fn(obs)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def stats(times: list[float]) -> dict:
    return {
        "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(np.mean(times)), "n": len(times),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(policy: Path, port: int) -> subprocess.Popen:
    from real_robot.client import PolicyClient, PolicyServerError

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "embodied.cli", "serve", str(policy), "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            PolicyClient(f"ws://127.0.0.1:{port}", timeout_s=1.0).close()
            return process
        except PolicyServerError:
            if process.poll() is not None:
                raise RuntimeError("embodied serve exited before listening") from None
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("embodied serve did not start within 120 s")


def jitter_run(policy_path: Path, hz: float, steps: int) -> dict:
    from real_robot.deploy import DeployConfig, LiveDisplay, deploy
    from real_robot.policy_runtime import LocalPolicy
    from real_robot.safety import SafetyLayer
    from real_robot.sim_robot import SimRobot, SimRobotConfig

    robot = SafetyLayer(SimRobot(SimRobotConfig(task="Reach", control_hz=hz)))
    episodes = max(1, steps // 50)
    policy = LocalPolicy.from_path(policy_path, control_hz=hz)
    cfg = DeployConfig(episodes=episodes, max_steps=50, display=False)
    start = time.perf_counter()
    summary = deploy(robot, cfg, policy=policy, display=LiveDisplay(enabled=False))
    wall = time.perf_counter() - start
    return {
        "control_hz": hz, "ticks": summary["steps"], "jitter_p50_ms": summary["jitter_ms_p50"],
        "jitter_p99_ms": summary["jitter_ms_p99"], "achieved_hz": summary["steps"] / wall,
        "overruns": summary["overruns"], "safety_events": dict(summary["safety_events"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and ticks (< 1 min)")
    parser.add_argument("--policy", help="a run, checkpoint or policy folder (default: untrained Reach-shaped MLP)")
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--loop-steps", type=int, default=0)
    args = parser.parse_args()
    requests = args.requests or (300 if args.quick else 2000)
    loop_steps = args.loop_steps or (200 if args.quick else 1000)
    torch.set_num_threads(1)
    machine = machine_info()

    from real_robot.client import PolicyClient
    from real_robot.policy_runtime import LocalPolicy

    with tempfile.TemporaryDirectory() as tmp:
        policy_path = Path(args.policy) if args.policy else untrained_policy(Path(tmp) / "policy")
        local = LocalPolicy.from_path(policy_path)
        port = free_port()
        server = start_server(policy_path, port)
        try:
            client = PolicyClient(f"ws://127.0.0.1:{port}")
            latency = {}
            for name, images in (("state", False), ("state+2x64x64rgb", True)):
                obs = observation(images)
                np.testing.assert_allclose(client.infer(obs), local.infer(obs), atol=1e-6)  # same answer
                latency[name] = {"local": stats(timed(local.infer, obs, requests)), "server": stats(timed(client.infer, obs, requests))}
            client.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
        jitter = {f"{hz:g}hz": jitter_run(policy_path, hz, loop_steps) for hz in (20.0, 50.0)}

    overhead = latency["state"]["server"]["p50_ms"] - latency["state"]["local"]["p50_ms"]
    print(f"{'observation':<18} {'local p50':>10} {'server p50':>11} {'server p99':>11}  (ms, {requests} requests)")
    for name, row in latency.items():
        print(f"{name:<18} {row['local']['p50_ms']:>10.3f} {row['server']['p50_ms']:>11.3f} {row['server']['p99_ms']:>11.3f}")
    print(f"{'loop':<8} {'ticks':>6} {'achieved Hz':>12} {'jitter p50':>11} {'jitter p99':>11} {'overruns':>9}  (ms)")
    for name, row in jitter.items():
        print(
            f"{name:<8} {row['ticks']:>6} {row['achieved_hz']:>12.2f} {row['jitter_p50_ms']:>11.3f} "
            f"{row['jitter_p99_ms']:>11.3f} {row['overruns']:>9}"
        )
    path = write_result(
        "deploy_latency_quick" if args.quick else "deploy_latency",
        {
            "policy": args.policy or "untrained MLP (64, 64), Reach state shape", "requests": requests,
            "loop_steps": loop_steps, "latency": latency, "jitter": jitter, "server_overhead_ms": overhead,
        },
        machine,
    )
    print(f"results: {path}")
    print(f"RESULT server_overhead_ms={overhead:.3f} jitter_p99_ms_50hz={jitter['50hz']['jitter_p99_ms']:.3f}")


if __name__ == "__main__":
    main()
