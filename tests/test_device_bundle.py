"""Tests of benchmarks/device_bundle.py: packages packed here arrive whole, part by part, and import
from the target alone."""

import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import device_bundle


def test_closure_leaves_out_the_device_image():
    names = {
        device_bundle.normalize(d.metadata["Name"]) for d in device_bundle.closure(["gymnasium"])
    }
    assert names == {"gymnasium", "farama-notifications"}  # numpy, cloudpickle, ... are there
    everything = {
        device_bundle.normalize(d.metadata["Name"])
        for d in device_bundle.closure(["gymnasium"], skip=frozenset())
    }
    assert {"numpy", "cloudpickle", "typing-extensions"} <= everything
    with pytest.raises(KeyError, match="not-a-package"):
        device_bundle.closure(["not-a-package"])


def test_parts_arrive_over_calls_and_import(tmp_path):
    manifest = device_bundle.pack(
        ["tabulate"], tmp_path / "packed", part_mib=0.01, skip=frozenset()
    )
    parts = [p["name"] for p in manifest["parts"]]
    assert len(parts) >= 3 and manifest["distributions"][0].startswith("tabulate==")
    # The first call brings half of the parts, the second the rest (as carry would).
    call = tmp_path / "call"
    call.mkdir()
    shutil.copy(tmp_path / "packed" / "manifest.json", call)
    target = tmp_path / "site"
    half = len(parts) // 2
    for name in parts[:half]:
        shutil.copy(tmp_path / "packed" / name, call)
    assert not device_bundle.unpack(call, target)
    for name in parts[:half]:
        (call / name).unlink()
    for name in parts[half:]:
        shutil.copy(tmp_path / "packed" / name, call)
    assert device_bundle.unpack(call, target)
    code = "import tabulate, sys; print(tabulate.__file__); print(tabulate.tabulate([[1, 2]]))"
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout  # -S: no site-packages, so tabulate comes from the target or not at all
    assert out.startswith(str(target)) and "1  2" in out


def test_a_corrupt_part_is_refused(tmp_path):
    manifest = device_bundle.pack(
        ["tabulate"], tmp_path / "packed", part_mib=0.01, skip=frozenset()
    )
    first = tmp_path / "packed" / manifest["parts"][0]["name"]
    data = bytearray(first.read_bytes())
    data[10] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        device_bundle.unpack(tmp_path / "packed", tmp_path / "site")


def test_closure_walks_the_extras_asked_for():
    """mujoco-warp asks for etils[epath]: etils is in the device image, its epath extra's needs
    (fsspec, zipp, ...) are walked too (and are in the image as well)."""
    dists = device_bundle.closure(["mujoco-warp"], skip=frozenset({"etils"}))
    names = {device_bundle.normalize(d.metadata["Name"]) for d in dists}
    assert {"mujoco-warp", "warp-lang", "mujoco", "fsspec", "zipp"} <= names
    assert "etils" not in names
