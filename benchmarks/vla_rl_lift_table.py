"""The README's SFT-to-RL table, made from benchmarks/results/vla_rl_lift.json (which every
`embodied lift` run updates).

    python benchmarks/vla_rl_lift_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "vla_rl_lift.json"
MODELS = {"flow_vla": "tiny flow VLA", "ar_vla": "tiny AR VLA", "lerobot_flow": "tiny LeRobot SmolVLA"}


def percent(value: float, ci: list[float] | None = None) -> str:
    text = f"{100 * value:.0f}%"
    return f"{text} ({100 * ci[0]:.0f}-{100 * ci[1]:.0f})" if ci else text


OUTCOME_NOTES = {"success_to_go": "per-step success to go"}


def readout(run: dict) -> str:
    """GRPO's outcome when not 0/1 success, and how S0 and S1 decode the AR VLA's tokens, when
    not by argmax."""
    outcome = run.get("outcome")
    notes = [OUTCOME_NOTES.get(outcome, f"{outcome.replace('_', '-')} outcome")] if outcome not in (None, "success") else []
    notes += [f"{run['readout']} readout"] if run.get("readout") not in (None, "argmax") else []
    return f" ({', '.join(notes)})" if notes else ""


def table(data: dict) -> str:
    rows = [
        "| model | task | RL | S0: SFT (95% CI) | S1: after RL (95% CI) | lift | RL env steps | RL wall s | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(data["runs"]):
        r = data["runs"][key]
        rows.append(
            f"| {MODELS.get(r['model'], r['model'])} | {r['task']} | {r['algorithm'].upper()}{readout(r)} | "
            f"{percent(r['S0'], r.get('S0_ci95'))} | {percent(r['S1'], r.get('S1_ci95'))} | "
            f"{r['lift_points']:+.0f} | {r['rl_env_steps']:,} | {r['rl_wall_s']:.0f} | `{r['command']}` |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(json.loads(RESULTS.read_text())))
