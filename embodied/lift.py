"""`embodied lift`: the SFT-to-RL story in one command.

    demos (scripted expert -> LeRobotDataset)  ->  SFT on the first `demos` of them  ->  S0
      ->  RL (PPO or GRPO) from the SFT checkpoint  ->  S1  ->  report with both videos

S0 and S1 are the final evaluations of the two runs, on the same held-out seeds and number
of episodes (the lift config's `eval_episodes`, forced into both runs). The results go to
<out>/lift.json and are merged into benchmarks/results/vla_rl_lift.json under
"<policy kind>/<task>/<algorithm>", from which the README's table is made.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from embodied.algos.sft import SFTConfig
from embodied.config import apply_override, from_dict, load_config, save_config
from embodied.runner.trainer import TrainConfig, Trainer

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "vla_rl_lift.json"


# What the lift passes to both runs itself; an sft/rl override of these would be silently replaced.
LIFT_SET_KEYS = ("seed", "eval.episodes", "init_from", "run_dir", "name", "algo.episodes")


@dataclasses.dataclass
class LiftConfig:
    name: str = "lift"
    sft: str = ""  # the SFT recipe (configs/sft_*.yaml)
    sft_checkpoint: str = ""  # start from this saved SFT policy instead of training one (S0: its evaluation)
    rl: str = ""  # the RL recipe (configs/ppo_*.yaml or grpo_*.yaml)
    sft_overrides: tuple[str, ...] = ()  # dotted overrides of the SFT recipe
    rl_overrides: tuple[str, ...] = ()
    demos: int = 10  # expert episodes SFT learns from (few-shot)
    record_episodes: int = 0  # episodes to record when the dataset is missing; 0: `demos`
    record_overrides: tuple[str, ...] = ()  # of that recording (RecordConfig: noise=0.3, label=clean, hold_steps=5)
    eval_episodes: int = 100  # S0 and S1: the same held-out seeds and count
    seed: int = 0
    out: str = ""  # default: runs/<name>
    results_file: str = str(RESULTS)  # "" keeps the results out of the shared table
    overwrite: bool = False


def run_lift(cfg: LiftConfig, command: str = "") -> dict[str, Any]:
    """Record (if needed), SFT, RL; returns the summary also written to <out>/lift.json.
    `command` is what reproduces it (stored with the results)."""
    if not cfg.rl or not (cfg.sft or cfg.sft_checkpoint):
        raise ValueError("A lift needs an `rl` recipe and an `sft` recipe or an `sft_checkpoint`.")
    for field in ("sft_overrides", "rl_overrides"):
        taken = [o for o in getattr(cfg, field) if o.split("=", 1)[0].strip() in LIFT_SET_KEYS]
        if taken:
            raise ValueError(f"{field} sets {', '.join(taken)}, which the lift sets for both runs "
                             f"({', '.join(LIFT_SET_KEYS)}): use the lift's own seed= / eval_episodes= / name= / out=.")
    out = Path(cfg.out or f"runs/{cfg.name}")
    if out.exists():
        if not cfg.overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=true or another name/out.")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_config(cfg, out / "lift.yaml")
    common = [f"seed={cfg.seed}", f"eval.episodes={cfg.eval_episodes}"]
    start = time.perf_counter()
    if cfg.sft_checkpoint:
        s0, sft_cfg, recorded, init_from = evaluate_checkpoint(cfg, common, out)
    else:
        sft_cfg = load_config(TrainConfig, cfg.sft, [*cfg.sft_overrides, *common, f"algo.episodes={cfg.demos}",
                                                     f"run_dir={out / 'sft'}", f"name={cfg.name}_sft"])
        if not isinstance(sft_cfg.algo, SFTConfig):
            raise ValueError(f"lift's sft recipe {cfg.sft} must train with algo sft; it names {sft_cfg.algo.name!r}.")
        dataset = Path(sft_cfg.algo.dataset)
        recorded = ensure_demos(dataset, sft_cfg, cfg.record_episodes or cfg.demos, cfg.seed, cfg.record_overrides)
        print(f"[lift] SFT on {cfg.demos} demos of {dataset} -> {out / 'sft'}", flush=True)
        s0 = Trainer(sft_cfg).train()
        init_from = str(out / "sft")
    sft_seconds = time.perf_counter() - start
    rl_cfg = load_config(TrainConfig, cfg.rl, [*cfg.rl_overrides, *common, f"init_from={init_from}",
                                               f"run_dir={out / 'rl'}", f"name={cfg.name}_rl"])
    if rl_cfg.eval.seed != sft_cfg.eval.seed or rl_cfg.env.task != sft_cfg.env.task:
        raise ValueError("The SFT and RL recipes must evaluate the same task on the same seeds (eval.seed, env.task).")
    print(f"[lift] S0 = {s0['success_rate']:.1%}; {rl_cfg.algo.name.upper()} from the SFT checkpoint -> {out / 'rl'}", flush=True)
    start = time.perf_counter()
    rl = Trainer(rl_cfg)
    s1 = rl.train()
    summary = {
        "model": rl_cfg.policy.kind, "task": rl_cfg.env.task, "algorithm": rl_cfg.algo.name,
        "readout": getattr(rl_cfg.policy, "decoding", None),  # the AR VLA's deterministic decoding
        "outcome": grpo_outcome(rl_cfg),
        "S0": s0["success_rate"], "S0_ci95": s0["success_ci95"], "S1": s1["success_rate"], "S1_ci95": s1["success_ci95"],
        "lift_points": 100 * (s1["success_rate"] - s0["success_rate"]),
        "eval_episodes": cfg.eval_episodes, "eval_seed": rl_cfg.eval.seed, "seeds": [cfg.seed],
        **sft_provenance(cfg, sft_cfg), "recorded_demos": recorded, "sft_checkpoint": init_from, "sft_wall_s": sft_seconds,
        "rl_env_steps": rl.env_steps, "rl_wall_s": rl.wall_time, "rl_total_wall_s": time.perf_counter() - start,
        "command": command, "sft_recipe": cfg.sft, "rl_recipe": cfg.rl,
        "sft_overrides": list(cfg.sft_overrides), "rl_overrides": list(cfg.rl_overrides),
    }
    (out / "lift.json").write_text(json.dumps(summary, indent=2))
    write_lift_page(out, summary)
    if cfg.results_file:
        merge_result(Path(cfg.results_file), summary)
    print(f"[lift] {summary['model']} on {summary['task']}: S0 {summary['S0']:.1%} -> S1 {summary['S1']:.1%} "
          f"({summary['lift_points']:+.1f} points) after {rl.env_steps} env steps of {summary['algorithm']}, "
          f"{summary['rl_wall_s']:.0f} s; report {out / 'index.html'}", flush=True)
    return summary


def sft_provenance(cfg: LiftConfig, sft_cfg: TrainConfig) -> dict[str, int | None]:
    """How many demos and updates the SFT start had: the lift's own SFT, or, for an existing
    `sft_checkpoint`, its run's config and the checkpoint's iteration (None where unknown)."""
    if not cfg.sft_checkpoint:
        return {"demos": cfg.demos, "sft_updates": getattr(sft_cfg.algo, "total_updates", None)}
    if not isinstance(sft_cfg.algo, SFTConfig):
        return {"demos": None, "sft_updates": None}
    iteration = re.fullmatch(r"iter_(\d+)", Path(cfg.sft_checkpoint).parent.name)
    updates = int(iteration.group(1)) * sft_cfg.algo.updates_per_iteration if iteration else None
    return {"demos": sft_cfg.algo.episodes or None, "sft_updates": updates}


def evaluate_checkpoint(cfg: LiftConfig, common: list[str], out: Path) -> tuple[dict, TrainConfig, int, str]:
    """S0 of an existing SFT policy: evaluated as the RL run's final evaluation will be (its
    env, held-out seed and episode count, and the RL recipe's runtime policy fields, such as the
    AR VLA's `decoding`, the way the RL run loads it). Its run's config, when found, says how it
    was trained."""
    from embodied.evaluate import evaluate_policy
    from embodied.runner.trainer import check_fixed_fields, load_policy

    checkpoint = Path(cfg.sft_checkpoint)
    rl_cfg = load_config(TrainConfig, cfg.rl, [*cfg.rl_overrides, *common])
    run_config = next((p / "config.yaml" for p in checkpoint.parents if (p / "config.yaml").is_file()), None)
    sft_cfg = load_config(TrainConfig, run_config) if run_config else rl_cfg
    if rl_cfg.torch_threads:
        torch.set_num_threads(rl_cfg.torch_threads)
    print(f"[lift] S0: evaluating {checkpoint} ({cfg.eval_episodes} episodes)", flush=True)
    (out / "sft").mkdir(parents=True, exist_ok=True)
    policy = load_policy(checkpoint, rl_cfg.policy, adapters=False)
    check_fixed_fields(rl_cfg.policy, policy, f"sft_checkpoint {checkpoint}")  # before S0, not after it
    s0 = evaluate_policy(policy, rl_cfg.env, cfg.eval_episodes, rl_cfg.eval.seed,
                         rl_cfg.eval.deterministic, video_path=out / "sft" / "videos" / "eval_s0.mp4")
    (out / "sft" / "eval.json").write_text(json.dumps(s0 | {"checkpoint": str(checkpoint)}, indent=2))
    return s0, sft_cfg, 0, str(checkpoint)


def ensure_demos(dataset: Path, sft_cfg: TrainConfig, episodes: int, seed: int, overrides: Sequence[str] = ()) -> int:
    """Record `episodes` expert demos into `dataset` when it does not exist (`overrides` of
    RecordConfig: DART noise, clean labels, steps held at the goal); returns how many were
    recorded (0 when the dataset was there)."""
    if (dataset / "meta" / "info.json").is_file():
        return 0
    from embodied.data.record import RecordConfig, record

    vlm = getattr(sft_cfg.policy, "vlm", None)
    image_size = vlm.image_size[0] if vlm is not None else sft_cfg.env.render.width
    cameras = sft_cfg.env.cameras if sft_cfg.env.obs_mode != "state" else ("front",)
    settings: dict[str, Any] = {"task": sft_cfg.env.task, "episodes": episodes, "root": str(dataset), "seed": seed,
                                "cameras": list(cameras), "image_size": image_size}
    for override in overrides:
        apply_override(settings, override)
    print(f"[lift] recording {episodes} expert demos of {sft_cfg.env.task} -> {dataset}", flush=True)
    record(from_dict(RecordConfig, settings))
    return episodes


# GRPO outcomes that are the 0/1 success: one per episode, or as the sparse reward to go of each step.
SUCCESS_OUTCOMES = (None, "success", "success_to_go")


def grpo_outcome(rl_cfg: TrainConfig) -> str | None:
    """What GRPO normalises within a group (None for other algorithms): its `outcome`, where a
    reward to go of the sparse reward (1 at the success that ends the episode) is "success_to_go"."""
    outcome = getattr(rl_cfg.algo, "outcome", None)
    if outcome == "reward_to_go" and rl_cfg.env.reward_mode == "sparse" and rl_cfg.env.terminate_on_success:
        return "success_to_go"
    return outcome


def merge_result(path: Path, summary: dict[str, Any]) -> None:
    """Put `summary` into the results file under model/task/algorithm[/outcome][/readout] (other
    entries kept; GRPO's outcome only when it is not the 0/1 success, the readout only when it is
    not the default argmax decoding)."""
    from benchmarks.common import machine_info

    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"benchmark": "vla_rl_lift", "runs": {}}
    data["machine"] = machine_info()
    key = f"{summary['model']}/{summary['task']}/{summary['algorithm']}"
    if summary.get("outcome") not in SUCCESS_OUTCOMES:
        key += f"/{summary['outcome']}"
    if summary.get("readout") not in (None, "argmax"):
        key += f"/{summary['readout']}"
    data["runs"][key] = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot_lift(out: Path, summary: dict[str, Any]) -> Path:
    """<out>/lift.png: held-out success against RL env steps, from S0 (the SFT policy, at 0)
    through the RL run's evaluations to S1, with 95% intervals at both ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embodied.report import read_metrics

    points = [(0, summary["S0"])] + [(r["env_steps"], r["eval/success_rate"]) for r in read_metrics(out / "rl")
                                     if "eval/success_rate" in r and r["env_steps"] < summary["rl_env_steps"]]
    points.append((summary["rl_env_steps"], summary["S1"]))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(*zip(*points, strict=True), marker="o")
    for x, value, ci in ((0, summary["S0"], summary["S0_ci95"]), (summary["rl_env_steps"], summary["S1"], summary["S1_ci95"])):
        ax.errorbar([x], [value], yerr=[[value - ci[0]], [ci[1] - value]], color="black", capsize=4)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"{summary['algorithm'].upper()} env steps")
    ax.set_ylabel("held-out success")
    ax.set_title(f"{summary['model']} on {summary['task']}: {summary['S0']:.0%} -> {summary['S1']:.0%}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "lift.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_lift_page(out: Path, summary: dict[str, Any]) -> Path:
    """<out>/index.html: S0 -> S1, the RL curves, and the final videos of both runs."""
    from embodied.report import write_report

    if (out / "sft" / "metrics.jsonl").is_file():
        write_report(out / "sft")
    write_report(out / "rl")
    plot_lift(out, summary)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    videos = []
    for label, run in (("before RL (SFT)", "sft"), ("after RL", "rl")):
        found = sorted((out / run / "videos").glob("*.mp4")) if (out / run / "videos").is_dir() else []
        if found:
            videos.append(f"<h3>{label}</h3><video src='{run}/videos/{found[-1].name}' controls loop muted width=512></video>")
    curves = "<img src='lift.png' width=480>" + "".join(
        f"<img src='rl/report/{p.name}' width=480>" for p in sorted((out / "rl" / "report").glob("*.png")))
    page = (f"<html><head><title>{html.escape(out.name)}</title></head><body>"
            f"<h1>{summary['model']} on {summary['task']}: {summary['S0']:.1%} &rarr; {summary['S1']:.1%}</h1>"
            f"<table>{rows}</table><h2>RL curves</h2>{curves}<h2>Videos</h2>{''.join(videos)}"
            f"<p>Full reports: <a href='sft/report/index.html'>SFT</a>, <a href='rl/report/index.html'>RL</a></p></body></html>")
    path = out / "index.html"
    path.write_text(page)
    return path
