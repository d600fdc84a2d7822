"""Carry the Python packages a GPU check needs to a lent device machine that cannot reach an index.

The workplace's device machines (`docs/scale.md`, "GPU figures on a lent device") hold PyTorch and
a scientific stack but not MuJoCo, MuJoCo Warp, Warp, gymnasium, ManiSkill or SAPIEN, reach no
package index, and take at most 64 MiB of files per call. Warp alone is ~150 MB as a wheel. So
this packs the exact installed files of those distributions (from this project's locked virtual
environment, the same Python 3.12 / x86-64 ABI as the device's) into one xz-compressed tar,
split into parts that each fit one call, and unpacks the parts there as they arrive:

    uv run python benchmarks/device_bundle.py pack warp              # -> .device_bundle/warp/
    python3 benchmarks/device_bundle.py unpack .device_bundle/warp /tmp/site   # there, each call

`pack GROUP` walks the requirements of the group's distributions (`GROUPS`) through the installed
metadata, leaves out what the device image already holds (`DEVICE_IMAGE`, as read there on
2026-11-17), and writes `part-NN` files plus `manifest.json` (their sha256s and the
distributions). `unpack` copies the parts present into a staging folder beside the target, one
per bundle (it lives on while the machine stays warm), and once all are there checks them and
extracts the tar into the target: put it on PYTHONPATH. Run again in later calls, it adds the
parts each brings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import re
import shutil
import sys
import tarfile
from importlib import metadata
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".device_bundle"  # ignored through .git/info/exclude by `pack`
PART_MIB = 56  # per part: leaves the working tree (~3 MiB) room within a call's 64 MiB

GROUPS: dict[str, list[str]] = {
    "warp": ["mujoco-warp", "gymnasium"],
    "maniskill": ["mani-skill", "mujoco"],  # `import sims` needs mujoco too
}
# What the device machines' image held (the device library's KINDS.md, read 2026-11-17); names
# normalized as `normalize` does.
_DEVICE_IMAGE_NAMES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp opencv-python
"""  # opencv-python: SAPIEN asks for it; the image's headless build provides cv2
DEVICE_IMAGE = frozenset(_DEVICE_IMAGE_NAMES.split())


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str], skip: frozenset[str] = DEVICE_IMAGE) -> list[metadata.Distribution]:
    """The installed distributions `roots` need (requirements with the extras asked for, markers
    evaluated for this interpreter), less those in `skip`, though the requirements of an extra
    asked of a skipped one are still walked; KeyError naming a root or requirement that is not
    installed."""
    from packaging.markers import default_environment  # here: `unpack` needs only the stdlib
    from packaging.requirements import Requirement

    base_env = cast(dict[str, str], default_environment())  # a TypedDict of str values
    seen: dict[str, metadata.Distribution] = {}
    walked: set[tuple[str, str]] = set()
    todo = [(normalize(r), "") for r in roots]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in walked or (name in skip and not extra):
            continue
        walked.add((name, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as err:
            raise KeyError(f"{name} is not installed here (uv sync --all-extras?)") from err
        if name not in skip:
            seen[name] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            only_extra = req.marker is not None and "extra" in str(req.marker)
            if only_extra != bool(extra):
                continue  # the base requirements when walking the distribution, else the extra's
            if req.marker is None or req.marker.evaluate(base_env | {"extra": extra}):
                todo.append((normalize(req.name), ""))
                todo.extend((normalize(req.name), e) for e in req.extras)
    return sorted(seen.values(), key=lambda d: normalize(d.metadata["Name"]))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(
    roots: list[str], out: Path, part_mib: float = PART_MIB, skip: frozenset[str] = DEVICE_IMAGE
) -> dict:
    """Tar + xz the installed files of `closure(roots, skip)` (paths relative to site-packages),
    split into parts of at most `part_mib` MiB in `out`; returns the manifest written beside."""
    dists = closure(roots, skip)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for dist in dists:
            base = Path(str(dist.locate_file("")))  # typed as a SimplePath: a Path here
            for f in dist.files or ():
                path = Path(str(dist.locate_file(f)))
                if path.is_file() and "__pycache__" not in f.parts and not str(f).startswith(".."):
                    tar.add(path, arcname=str(path.relative_to(base)))
    print(
        f"{len(dists)} distributions, {len(buf.getvalue()) / 1e6:.0f} MB of files: xz -9 (minutes)"
    )
    packed = lzma.compress(buf.getvalue(), preset=9)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    size = int(part_mib * 2**20)
    parts = []
    for k, start in enumerate(range(0, len(packed), size)):
        chunk = packed[start : start + size]
        name = f"part-{k:02d}"
        (out / name).write_bytes(chunk)
        parts.append({"name": name, "bytes": len(chunk), "sha256": _sha256(chunk)})
    manifest = {
        "distributions": [f"{d.metadata['Name']}=={d.version}" for d in dists],
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "tar_bytes": len(buf.getvalue()),
        "xz_bytes": len(packed),
        "sha256": _sha256(packed),
        "parts": parts,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def unpack(bundle: Path, target: Path) -> bool:
    """Stage the parts of `bundle` present now; once all are staged, verify and extract them into
    `target`. Returns whether the target is complete; raises ValueError on a corrupt part."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    stage = target.with_name(f"{target.name}.{manifest['sha256'][:12]}.parts")  # per bundle
    stage.mkdir(parents=True, exist_ok=True)
    for part in manifest["parts"]:
        src = bundle / part["name"]
        if src.exists() and not (stage / part["name"]).exists():
            if _sha256(src.read_bytes()) != part["sha256"]:
                raise ValueError(f"{src}: sha256 differs from the manifest")
            shutil.copyfile(src, stage / part["name"])
    missing = [p["name"] for p in manifest["parts"] if not (stage / p["name"]).exists()]
    if missing:
        print(
            f"staged {len(manifest['parts']) - len(missing)}/{len(manifest['parts'])} parts; missing {missing}"
        )
        return False
    packed = b"".join((stage / p["name"]).read_bytes() for p in manifest["parts"])
    if _sha256(packed) != manifest["sha256"]:
        raise ValueError("the joined parts' sha256 differs from the manifest")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(packed)), mode="r") as tar:
        tar.extractall(target, filter="data")
    print(f"extracted {len(manifest['distributions'])} distributions into {target}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a group's distributions into parts")
    p.add_argument("group", choices=sorted(GROUPS))
    p.add_argument("--part-mib", type=float, default=PART_MIB)
    u = sub.add_parser("unpack", help="stage the parts present; extract once all are")
    u.add_argument("bundle", type=Path)
    u.add_argument("target", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        exclude = ROOT / ".git" / "info" / "exclude"
        if exclude.parent.exists() and "/.device_bundle/" not in (
            exclude.read_text() if exclude.exists() else ""
        ):
            with exclude.open("a") as f:
                f.write("/.device_bundle/\n")
        manifest = pack(GROUPS[args.group], OUT / args.group, args.part_mib)
        print(json.dumps({k: v for k, v in manifest.items() if k != "parts"}, indent=1))
        print(
            f"{len(manifest['parts'])} parts in {OUT / args.group}: carry one per call (see docs/scale.md)"
        )
    else:
        sys.exit(0 if unpack(args.bundle, args.target) else 3)


if __name__ == "__main__":
    main()
