"""Residual off-policy RL on a BC base: start and end success, env steps, wall time.

    uv run python -m benchmarks.residual_o2o --quick      # small budget; last line RESULT residual_lift=<points>
    uv run python -m benchmarks.residual_o2o              # the full recipe (configs/residual_pickcube_mlp.yaml)
    uv run python -m benchmarks.residual_o2o --curves runs/residual_o2o_0 runs/ppo_from_base_pickcube   # --base: S0's run
    uv run python -m benchmarks.residual_o2o --vgps runs/residual_o2o_quick_0 --temperature 0.2   # V-GPS; RESULT vgps_lift=<points>
    uv run python -m benchmarks.residual_o2o --o2o runs/o2o_pickcube_calql --scratch runs/o2o_scratch   # o2o vs scratch
    uv run python -m benchmarks.residual_o2o --parl runs/o2o_parl_reach_0 --sft runs/o2o_parl_reach_sft   # PA-RL on a VLA
    uv run python -m benchmarks.residual_o2o --table      # the README's table from the results JSON

Steps: record PickCube demos if data/PickCube is missing; train the BC base
(configs/sft_pickcube_mlp.yaml) if its run directory is missing; evaluate the base on the
held-out seeds the residual run evaluates on (S0); train the residual recipe from it; its
final evaluation is S1 (same seeds, same episode count). The lift is S1 - S0 in points.
Results merge into benchmarks/results/residual_o2o.json under "<recipe>/<task>/seed<seed>"
(quick runs under "<recipe>-quick/<task>/seed<seed>"). `--curves` plots eval success against env steps
of finished runs (residual vs PPO from the same base, `--base` the base's run) into
benchmarks/results/residual_vs_ppo_<task>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.common import RESULTS_DIR, machine_info

if TYPE_CHECKING:
    from matplotlib.typing import LegendLocType

RESULTS = RESULTS_DIR / "residual_o2o.json"
RECIPE = "configs/residual_pickcube_mlp.yaml"
BASE_RECIPE = "configs/sft_pickcube_mlp.yaml"


def ensure_base(base_dir: Path, dataset: str, seed: int) -> None:
    """Record demos and train the BC base when they are missing."""
    from embodied.config import load_config
    from embodied.data.record import RecordConfig, record
    from embodied.runner.trainer import TrainConfig, Trainer

    if not (Path(dataset) / "meta" / "info.json").is_file():
        record(RecordConfig(task="PickCube", episodes=100, root=dataset, seed=0), progress=False)
    if not (base_dir / "checkpoints" / "latest").exists():
        cfg = load_config(TrainConfig, BASE_RECIPE, [f"run_dir={base_dir}", f"seed={seed}", "torch_threads=1",
                                                     f"algo.dataset={dataset}"])
        Trainer(cfg).train()


def run_residual(overrides: list[str], out: Path) -> dict[str, Any]:
    """S0 (the base on the residual run's held-out seeds), the residual run, S1."""
    from embodied.config import load_config
    from embodied.evaluate import evaluate_policy
    from embodied.runner.trainer import TrainConfig, Trainer
    from policies.base import Policy
    from policies.residual import ResidualPolicyConfig, resolve_policy_folder

    cfg = load_config(TrainConfig, RECIPE, [f"run_dir={out}", *overrides])
    if not isinstance(cfg.policy, ResidualPolicyConfig):
        raise ValueError(f"The benchmark trains a residual policy; policy.kind is {cfg.policy.kind!r}.")
    base_path = cfg.policy.base_path
    torch.set_num_threads(cfg.torch_threads or 1)
    base = Policy.from_pretrained(resolve_policy_folder(base_path))
    s0 = evaluate_policy(base, cfg.env, cfg.eval.episodes, cfg.eval.seed, cfg.eval.deterministic)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    s1 = trainer.train()
    return {
        "task": cfg.env.task, "base": base_path, "seed": cfg.seed, "eval_seed": cfg.eval.seed,
        "eval_episodes": cfg.eval.episodes, "start_success": s0["success_rate"], "end_success": s1["success_rate"],
        "end_success_ci95": s1["success_ci95"], "lift_points": 100 * (s1["success_rate"] - s0["success_rate"]),
        "env_steps": trainer.env_steps, "gradient_updates": trainer.algo.updates,
        "train_wall_s": trainer.wall_time, "total_wall_s": time.perf_counter() - start, "run_dir": str(out),
        "overrides": overrides,
    }


def entry_from_run(run_dir: Path, base_dir: Path, recipe: str) -> dict[str, Any]:
    """An entry from a run's logged evaluations (its last one) and the base's eval.json (same
    held-out seeds and episode count), for runs trained with `embodied train`."""
    import yaml

    steps, success, wall = eval_curve(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    base = json.loads((base_dir / "eval.json").read_text())
    if base["episodes"] != cfg["eval"]["episodes"] or base["seed"] != cfg["eval"]["seed"]:
        raise ValueError("The base was evaluated on other held-out episodes than the run.")
    return {
        "task": cfg["env"]["task"], "base": str(base_dir), "seed": cfg["seed"], "eval_seed": cfg["eval"]["seed"],
        "eval_episodes": cfg["eval"]["episodes"], "start_success": base["success_rate"], "end_success": success[-1],
        "lift_points": 100 * (success[-1] - base["success_rate"]), "env_steps": steps[-1],
        "train_wall_s": wall[-1], "curve": {"env_steps": steps, "success": success, "wall_s": wall},
        "run_dir": str(run_dir), "recipe": recipe,
    }


def run_vgps(critic_run: Path, base_dir: Path, episodes: int, num_samples: int, temperature: float) -> dict[str, Any]:
    """The base alone and the base steered by `critic_run`'s Q (V-GPS), on the same held-out
    episodes of the critic run's env."""
    import yaml

    from embodied.config import from_dict
    from embodied.evaluate import evaluate_policy
    from policies.base import Policy
    from policies.residual import resolve_policy_folder
    from policies.vgps import ValueGuidedPolicy, load_run_critic
    from sims.core import EnvConfig

    cfg = yaml.safe_load((critic_run / "config.yaml").read_text())
    env_cfg = from_dict(EnvConfig, cfg["env"])
    base = Policy.from_pretrained(resolve_policy_folder(base_dir))
    torch.manual_seed(0)
    start = evaluate_policy(base, env_cfg, episodes, cfg["eval"]["seed"], deterministic=True)
    steered = ValueGuidedPolicy(base, load_run_critic(critic_run), num_samples=num_samples, temperature=temperature)
    t0 = time.perf_counter()
    end = evaluate_policy(steered, env_cfg, episodes, cfg["eval"]["seed"], deterministic=True)
    return {"task": env_cfg.task, "base": str(base_dir), "critic_run": str(critic_run), "num_samples": num_samples,
            "temperature": temperature,
            "eval_seed": cfg["eval"]["seed"], "eval_episodes": episodes, "start_success": start["success_rate"],
            "end_success": end["success_rate"], "end_success_ci95": end["success_ci95"],
            "lift_points": 100 * (end["success_rate"] - start["success_rate"]), "env_steps": 0,
            "eval_wall_s": time.perf_counter() - t0, "seeds": [0]}


def o2o_entry(run_dir: Path, scratch_dir: Path) -> dict[str, Any]:
    """Offline-to-online against the same online algorithm from scratch, from both runs' logged
    evaluations: the offline start is the last evaluation before the first env step (the end of
    the offline phase), the end is each run's final one; both at the same env-step budget."""
    import yaml

    steps, success, wall = eval_curve(run_dir)
    scratch_steps, scratch_success, scratch_wall = eval_curve(scratch_dir)
    if steps[-1] != scratch_steps[-1]:
        raise ValueError(f"{run_dir} ended at {steps[-1]} env steps, {scratch_dir} at {scratch_steps[-1]}: "
                         "compare them at the same budget.")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    offline = [s for t, s in zip(steps, success, strict=True) if t == 0]
    if not offline:
        raise ValueError(f"{run_dir} has no evaluation before its first env step (eval.every divides the offline phase?).")
    return {
        "task": cfg["env"]["task"], "seed": cfg["seed"], "eval_seed": cfg["eval"]["seed"],
        "eval_episodes": cfg["eval"]["episodes"], "method": cfg["algo"]["method"],
        "online_mode": cfg["algo"]["online_mode"], "offline_updates": cfg["algo"]["offline_updates"],
        "bc_updates": cfg["algo"].get("bc_updates", 0), "actor_update": cfg["algo"].get("actor_update", "native"),
        "dataset": cfg["algo"]["dataset"], "start_success": offline[-1], "end_success": success[-1],
        "scratch_end_success": scratch_success[-1], "env_steps": steps[-1], "train_wall_s": wall[-1],
        "scratch_train_wall_s": scratch_wall[-1], "run_dir": str(run_dir), "scratch_run_dir": str(scratch_dir),
        "curve": {"env_steps": steps, "success": success}, "scratch_curve": {"env_steps": scratch_steps,
                                                                             "success": scratch_success},
    }


def parl_entry(run_dir: Path, sft_dir: Path) -> dict[str, Any]:
    """PA-RL on an SFT VLA: its SFT start S0 (the SFT run's eval.json), the PA-RL agent (the
    VLA's proposals optimised by the critic, how PA-RL acts) after the offline phase and at the
    end, from the run's logged evaluations, and the distilled VLA alone at the end, evaluated here
    on the same held-out episodes."""
    import yaml

    from embodied.config import from_dict
    from embodied.evaluate import evaluate_policy
    from policies.base import Policy
    from policies.residual import resolve_policy_folder
    from sims.core import EnvConfig

    steps, success, wall = eval_curve(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    sft = json.loads((sft_dir / "eval.json").read_text())
    episodes, seed = cfg["eval"]["episodes"], cfg["eval"]["seed"]
    if sft["episodes"] != episodes or sft["seed"] != seed:
        raise ValueError(f"{sft_dir} was evaluated on other held-out episodes than {run_dir}.")
    offline = [s for t, s in zip(steps, success, strict=True) if t == 0]
    policy = Policy.from_pretrained(resolve_policy_folder(run_dir))
    alone = evaluate_policy(policy, from_dict(EnvConfig, cfg["env"]), episodes, seed, cfg["eval"]["deterministic"])
    algo = cfg["algo"]
    return {
        "task": cfg["env"]["task"], "policy": cfg["policy"]["kind"], "seed": cfg["seed"], "eval_seed": seed,
        "eval_episodes": episodes, "sft_run_dir": str(sft_dir), "dataset": algo["dataset"],
        "online_mode": algo["online_mode"], "offline_updates": algo["offline_updates"],
        "critic_warmup_updates": algo["critic_warmup_updates"], "parl_act": algo.get("parl_act", False),
        "start_success": sft["success_rate"], "offline_success": offline[-1] if offline else None,
        "end_success": success[-1], "policy_alone_end_success": alone["success_rate"],
        "lift_points": 100 * (success[-1] - sft["success_rate"]), "env_steps": steps[-1], "train_wall_s": wall[-1],
        "run_dir": str(run_dir), "curve": {"env_steps": steps, "success": success},
    }


def merge_result(key: str, entry: dict[str, Any], command: str) -> None:
    data: dict[str, Any] = (
        json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"benchmark": "residual_o2o", "results": {}}
    )
    data["results"][key] = {**entry, "command": command, "machine": machine_info()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def results_table(data: dict[str, Any]) -> str:
    """The README's off-policy table: one row per entry of residual_o2o.json, by key."""
    rows = ["| entry | start | end | lift | env steps | wall s | also | command |", "|---|---|---|---|---|---|---|---|"]
    for key in sorted(data["results"]):
        r = data["results"][key]
        also = []
        if "scratch_end_success" in r:
            also.append(f"from scratch {100 * r['scratch_end_success']:.0f}%")
        if r.get("offline_success") is not None:
            also.append(f"after offline {100 * r['offline_success']:.0f}%")
        if "policy_alone_end_success" in r:
            also.append(f"the VLA alone {100 * r['policy_alone_end_success']:.0f}%")
        if "num_samples" in r:
            also.append(f"{r['num_samples']} proposals, temperature {r['temperature']}")
        wall = r.get("train_wall_s", r.get("eval_wall_s"))
        command, _, run = r["command"].partition(" (run ")
        made = f" (run `{run.rstrip(')')}`)" if run else ""
        rows.append(
            f"| {key} | {100 * r['start_success']:.0f}% | {100 * r['end_success']:.0f}% | "
            f"{100 * (r['end_success'] - r['start_success']):+.0f} | {r['env_steps']:,} | "
            f"{'-' if wall is None else f'{wall:.0f}'} | {'; '.join(also)} | `{command}`{made} |"
        )
    return "\n".join(rows)


def eval_curve(run_dir: Path) -> tuple[list[int], list[float], list[float]]:
    """(env steps, eval success, wall seconds) of a run's evaluations, from metrics.jsonl."""
    steps, success, wall = [], [], []
    last_wall = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        last_wall = row.get("time/wall_s", last_wall)
        if "eval/success_rate" in row:
            steps.append(int(row["env_steps"]))
            success.append(float(row["eval/success_rate"]))
            wall.append(last_wall)
    return steps, success, wall


def plot_curves(runs: list[Path], start_success: float | None, path: Path, labels: list[str] | None = None,
                start_label: str = "BC base (S0)", legend_loc: LegendLocType = "best") -> None:
    """Eval success against env steps, one line per run, the base's S0 as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, run in enumerate(runs):
        steps, success, _ = eval_curve(run)
        label = labels[i] if labels else run.name
        ax.plot([0, *steps], [start_success if start_success is not None else float("nan"), *success], marker="o", label=label)
    if start_success is not None:
        ax.axhline(start_success, linestyle="--", color="gray", label=start_label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("held-out success (100 episodes)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small budget (8k env steps, 50 eval episodes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", default="runs/offpolicy_base_pickcube", help="the BC base's run directory")
    parser.add_argument("--dataset", default="data/PickCube")
    parser.add_argument("--out", default="", help="run directory (default runs/residual_o2o[_quick]_<seed>)")
    parser.add_argument("--curves", nargs="*", help="plot eval curves of these finished run directories and exit")
    parser.add_argument("--vgps", metavar="CRITIC_RUN", help="V-GPS: steer the base with this run's Q and exit")
    parser.add_argument("--episodes", type=int, default=100, help="V-GPS evaluation episodes")
    parser.add_argument("--samples", type=int, default=16, help="V-GPS proposals per decision")
    parser.add_argument("--temperature", type=float, default=1.0, help="V-GPS proposals' spread around the base's mode")
    parser.add_argument("--o2o", nargs="+", metavar="RUN_DIR",
                        help="record offline-to-online runs against --scratch (the same online algorithm from scratch), plot all")
    parser.add_argument("--scratch", metavar="RUN_DIR", help="with --o2o: the from-scratch run at the same budget")
    parser.add_argument("--parl", nargs="+", metavar="RUN_DIR",
                        help="record PA-RL runs on an SFT VLA (algo o2o, actor_update parl) against --sft, plot all")
    parser.add_argument("--sft", metavar="RUN_DIR", help="with --parl: the SFT run the PA-RL runs started from (S0)")
    parser.add_argument("--control", metavar="RUN_DIR", help="with --parl: a run to plot beside them (not recorded)")
    parser.add_argument("--from-run", nargs=2, metavar=("KEY", "RUN_DIR"),
                        help="record an entry KEY (e.g. residual_td3/PickCube) from a trained run's logged evaluations")
    parser.add_argument("--command", default="", help="with --from-run: the `uv run embodied train CONFIG ...` "
                        "command that made the run (default: configs/<RUN_DIR's name>.yaml)")
    parser.add_argument("--table", action="store_true", help="print the README's table from the results JSON and exit")
    args = parser.parse_args()
    if args.table:
        print(results_table(json.loads(RESULTS.read_text())))
        return
    if args.curves:
        base_eval = Path(args.base) / "eval.json"
        s0 = json.loads(base_eval.read_text())["success_rate"] if base_eval.is_file() else None
        import yaml

        configs = [yaml.safe_load((Path(run) / "config.yaml").read_text()) for run in args.curves]
        names = {"residual": "residual TD3 on the BC base", "ppo": "PPO from the BC base"}
        labels = [f"{names.get(c['algo']['name'], c['algo']['name'])}, seed {c['seed']}" for c in configs]
        path = RESULTS_DIR / f"residual_vs_ppo_{configs[0]['env']['task'].lower()}.png"
        plot_curves([Path(r) for r in args.curves], s0, path, labels)
        print(f"wrote {path}")
        return
    if args.vgps:
        torch.set_num_threads(1)
        entry = run_vgps(Path(args.vgps), Path(args.base), args.episodes, args.samples, args.temperature)
        command = (f"uv run python -m benchmarks.residual_o2o --vgps {args.vgps} --samples {args.samples} "
                   f"--temperature {args.temperature}")
        merge_result(f"vgps/{entry['task']}/{Path(args.vgps).name}/K{args.samples}-T{args.temperature}", entry, command)
        print(json.dumps({k: entry[k] for k in ("start_success", "end_success", "eval_episodes")}))
        print(f"RESULT vgps_lift={entry['lift_points']:.1f}")
        return
    if args.o2o:
        if not args.scratch:
            parser.error("--o2o needs --scratch RUN_DIR (the same online algorithm from scratch).")
        runs, scratch = [Path(r) for r in args.o2o], Path(args.scratch)
        labels = []
        for run in runs:
            entry = o2o_entry(run, scratch)
            parl_tag = "_parl" if entry["actor_update"] == "parl" else ""
            key = (f"o2o_{entry['method']}{parl_tag}_{entry['online_mode']}/{entry['task']}/"
                   f"bc{entry['bc_updates']}-of-{entry['offline_updates']}/seed{entry['seed']}")
            merge_result(key, entry, f"uv run embodied train configs/o2o_{entry['task'].lower()}_{entry['method']}.yaml "
                                     f"seed={entry['seed']} algo.bc_updates={entry['bc_updates']} "
                                     f"algo.actor_update={entry['actor_update']} (run {run})")
            then = "PA-RL" if entry["actor_update"] == "parl" else entry["method"]
            actor = "BC actor" if entry["bc_updates"] >= entry["offline_updates"] else f"BC then {then} actor"
            labels.append(f"{entry['method']} offline ({actor}), then {entry['online_mode']}, seed {entry['seed']}")
            print(key, json.dumps({k: entry[k] for k in ("start_success", "end_success", "scratch_end_success",
                                                         "env_steps")}))
        path = RESULTS_DIR / f"o2o_vs_scratch_{entry['task'].lower()}.png"
        plot_curves([*runs, scratch], None, path, [*labels, f"{entry['online_mode']} from scratch, seed {entry['seed']}"])
        print(f"wrote {path}")
        return
    if args.parl:
        if not args.sft:
            parser.error("--parl needs --sft RUN_DIR (the SFT run the PA-RL runs started from).")
        torch.set_num_threads(1)
        runs, labels = [Path(r) for r in args.parl], []
        for run in runs:
            entry = parl_entry(run, Path(args.sft))
            key = f"parl_{entry['policy']}_{entry['online_mode']}/{entry['task']}/seed{entry['seed']}"
            merge_result(key, entry, f"uv run embodied train configs/o2o_parl_{entry['task'].lower()}_{entry['policy']}.yaml "
                                     f"seed={entry['seed']} (run {run})")
            labels.append(f"PA-RL agent (VLA + critic), seed {entry['seed']}")
            print(key, json.dumps({k: entry[k] for k in ("start_success", "offline_success", "end_success",
                                                         "policy_alone_end_success", "env_steps", "train_wall_s")}))
        if args.control:
            import yaml

            control = yaml.safe_load((Path(args.control) / "config.yaml").read_text())
            runs.append(Path(args.control))
            rows = [json.loads(line) for line in (Path(args.control) / "metrics.jsonl").read_text().splitlines()]
            updates = max((row.get("train/updates", 0.0) for row in rows), default=0.0)
            frozen = control["algo"]["critic_warmup_updates"] >= updates  # the policy never took a step
            labels.append(f"control: {'the same with the VLA frozen (critic only)' if frozen else Path(args.control).name}, "
                          f"seed {control['seed']}")
        path = RESULTS_DIR / f"parl_{entry['policy']}_{entry['task'].lower()}.png"
        plot_curves(runs, entry["start_success"], path, labels, start_label="SFT start (S0)", legend_loc="lower right")
        print(f"wrote {path}")
        return
    if args.from_run:
        key, run = args.from_run
        command = args.command or f"uv run embodied train configs/{Path(run).name}.yaml"
        recipe = next((word for word in command.split() if word.endswith(".yaml")), "")
        entry = entry_from_run(Path(run), Path(args.base), recipe)
        merge_result(key, entry, f"{command} (run {run})")
        print(json.dumps({k: entry[k] for k in ("start_success", "end_success", "env_steps", "train_wall_s")}))
        return
    torch.set_num_threads(1)
    ensure_base(Path(args.base), args.dataset, args.seed)
    overrides = [f"seed={args.seed}", f"policy.base_path={args.base}", f"algo.demo_dataset={args.dataset}"]
    if args.quick:
        overrides += ["total_env_steps=8000", "eval.episodes=50", "eval.every=0", "checkpoint.every=0"]
    out = Path(args.out or f"runs/residual_o2o{'_quick' if args.quick else ''}_{args.seed}")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    entry = run_residual(overrides, out)
    command = f"uv run python -m benchmarks.residual_o2o{' --quick' if args.quick else ''} --seed {args.seed}"
    merge_result(f"residual_td3{'-quick' if args.quick else ''}/{entry['task']}/seed{args.seed}", entry, command)
    print(json.dumps({k: entry[k] for k in ("start_success", "end_success", "env_steps", "train_wall_s")}))
    print(f"RESULT residual_lift={entry['lift_points']:.1f}")


if __name__ == "__main__":
    main()
