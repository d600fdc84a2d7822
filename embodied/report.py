"""`embodied report RUN_DIR`: PNG curves (success and return against env steps and wall time)
and an HTML page with the run's config, final evaluation and videos."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

CURVES = (
    ("rollout/success_rate", "training success (rollouts)"),
    ("eval/success_rate", "evaluation success (held-out seeds)"),
    ("rollout/return", "episode return"),
)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no metrics.jsonl: not a training run directory.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(rows: list[dict], out: Path) -> list[Path]:
    """One PNG per x axis (env steps, wall time), a panel per curve."""
    paths = []
    steps = ("env_steps", "env steps") if any("env_steps" in r for r in rows) else ("updates", "gradient updates")
    for x_key, x_label, name in ((*steps, "curves_steps.png"), ("time/wall_s", "wall time (s)", "curves_time.png")):
        curves = [c for c in CURVES if any(c[0] in r for r in rows)]
        if not any("rollout/return" in r for r in rows):  # supervised runs: their loss
            curves.append(("train/loss", "training loss"))
        fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
        for ax, (key, title) in zip(axes[0], curves, strict=True):
            points = [(r[x_key], r[key]) for r in rows if key in r and x_key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="." if len(points) < 30 else None)
            ax.set_title(title)
            ax.set_xlabel(x_label)
            ax.xaxis.set_major_formatter(EngFormatter())
            ax.grid(alpha=0.3)
            if "success" in key:
                ax.set_ylim(-0.02, 1.02)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(run_dir: str | Path) -> Path:
    """Write report/curves_*.png and report/index.html into `run_dir`; returns the HTML path."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    plots = plot_curves(rows, out)
    final = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() else None
    videos = sorted((run_dir / "videos").glob("*.mp4")) if (run_dir / "videos").is_dir() else []
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(run_dir.name)}</title></head><body>",
             f"<h1>Run {html.escape(run_dir.name)}</h1>"]
    if final:
        low, high = final["success_ci95"]
        parts.append(
            f"<p><b>Final evaluation:</b> success {final['success_rate']:.1%} (95% CI {low:.1%} to {high:.1%}) over "
            f"{final['episodes']} episodes (seed {final['seed']}), after {final.get('env_steps', '?')} env steps and "
            f"{final.get('wall_s', 0):.0f} s.</p>"
        )
    parts += [f"<img src='{p.name}' style='max-width:100%'>" for p in plots]
    for video in videos:
        rel = Path("..") / "videos" / video.name
        parts.append(f"<h3>{html.escape(video.stem)}</h3><video src='{rel}' controls loop width='480'></video>")
    parts.append(f"<h2>Config</h2><pre>{html.escape(config)}</pre></body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
