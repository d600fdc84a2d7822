"""The `embodied` command line, end to end on small settings."""

import json

from embodied.cli import main


def test_tasks_lists_every_task(capsys):
    import sims

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for task in sims.list_tasks():
        assert task in out


def test_unknown_task_is_one_clear_line(capsys):
    assert main(["sim-demo", "--task", "PikCube"]) == 2
    err = capsys.readouterr().err
    assert "Unknown task 'PikCube'" in err and "PickCube" in err and "Traceback" not in err


def test_demo_writes_videos_and_success_table(tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "demo"
    assert main(["demo", "--episodes", "10", "--out", str(out)]) == 0
    results = json.loads((out / "success.json").read_text())
    assert {r["task"] for r in results} == set(__import__("sims").list_tasks())
    assert all(0.0 <= r["success_rate"] <= 1.0 and r["episodes"] == 10 for r in results)
    assert "| task |" in (out / "success.md").read_text()
    frames = iio.imread(out / "PickCube.mp4")
    assert frames.ndim == 4 and frames.shape[0] > 10 and frames.shape[-1] == 3
    # the video shows motion: the first and last frames differ
    assert abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1.0
