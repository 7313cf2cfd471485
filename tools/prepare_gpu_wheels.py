"""Gather, here, the wheels the GPU check needs beyond the GPU machine's image (docs/gpu_check.md).

    .venv/bin/python tools/prepare_gpu_wheels.py            # -> gpu_wheels/, then prints the size
    .venv/bin/python tools/prepare_gpu_wheels.py --out DIR --limit-mib 64

The GPU machine has Python 3.12 with torch, torchvision, numpy, Pillow, OpenCV, PyYAML,
tqdm, tabulate, portalocker, cloudpickle, matplotlib, TensorBoard and safetensors, but no
package index. What the suite needs beyond that travels as wheels in ``gpu_wheels/``
(ignored by git; the device tool's ``carry``), at the versions this environment runs:

- pure-Python wheels (omegaconf, fvcore, iopath, yacs, termcolor, and timm at the suite's
  pin): downloaded for Python 3.12, or built here when the index has only an sdist;
- binary wheels for CPython 3.12 / manylinux x86_64 (pycocotools);
- Detectron2 v0.6's Python sources, exactly as ``tools/install_detectron2.sh`` installed them
  into this environment (that script runs first if ``import detectron2`` fails), packed as a
  pure-Python wheel without compiled files (``detection.compat`` covers the C++ ops).

Every carried wheel's own requirements are checked against the carried set and the
image's packages. The total (wheels + the working tree that travels) must stay within the
device tool's 64 MiB: the script prints it and exits 1 when it does not fit.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# (distribution, pin used when this environment does not have it, binary?)
WHEELS = (
    ("omegaconf", "2.4.0", False),
    ("fvcore", "0.1.5.post20221221", False),
    ("iopath", "0.1.9", False),
    ("yacs", "0.1.8", False),
    ("termcolor", "3.3.0", False),
    ("timm", "1.0.31", False),  # the suite's pin; the image's timm may differ
    ("pycocotools", "2.0.11", True),
)
# What the GPU image holds already (device notes); the carried wheels may require these.
IMAGE_HAS = {"torch", "torchvision", "numpy", "pillow", "pyyaml", "tqdm", "tabulate", "portalocker", "cloudpickle",
             "matplotlib", "opencv-python-headless", "tensorboard", "safetensors", "huggingface-hub", "scipy",
             "packaging", "typing-extensions", "filelock", "fsspec", "requests", "six", "setuptools"}
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none"]
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any")
LIMIT_MIB = 64.0


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True)


def version_of(name: str, pin: str) -> str:
    """The version this environment runs (so the GPU runs what the tests ran), else the pin."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return pin


def fetch(name: str, version: str, binary: bool, out: Path) -> Path:
    """One wheel for CPython 3.12 / manylinux x86_64 into ``out``; a pure one is built here if needed."""
    spec = f"{name}=={version}"
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    before = set(out.glob("*.whl"))
    res = pip("download", "-q", "--no-deps", "--only-binary=:all:", *TARGET, *platforms, "-d", str(out), spec)
    if res.returncode != 0 and not binary:  # an sdist only (fvcore): build the pure-Python wheel here
        res = pip("wheel", "-q", "--no-deps", "-w", str(out), spec)
    new = sorted(set(out.glob("*.whl")) - before)
    if res.returncode != 0 or not new:
        raise SystemExit(f"cannot get a wheel of {spec} for Python 3.12:\n{res.stderr.strip()}")
    wheel = new[0]
    if not binary and not wheel.name.endswith(("-py3-none-any.whl", "-py2.py3-none-any.whl")):
        raise SystemExit(f"{wheel.name}: expected a pure-Python wheel")
    return wheel


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pack_pure_wheel(package_dir: Path, name: str, version: str, summary: str, out: Path) -> Path:
    """A py3-none-any wheel of one installed package folder (no caches, no compiled files)."""
    info = f"{name}-{version}.dist-info"
    files = sorted(p for p in package_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix not in (".pyc", ".so", ".pyd"))
    meta = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n",
            f"{info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: droppos tools/prepare_gpu_wheels.py\n"
                              "Root-Is-Purelib: true\nTag: py3-none-any\n")}
    path = out / f"{name}-{version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            arc = f"{package_dir.name}/{f.relative_to(package_dir).as_posix()}"
            data = f.read_bytes()
            zf.writestr(zipfile.ZipInfo(arc, date_time=(2021, 11, 16, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
            records.append(f"{arc},{record_hash(data)},{len(data)}")
        for arc, text in meta.items():
            data = text.encode()
            zf.writestr(zipfile.ZipInfo(arc, date_time=(2021, 11, 16, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
            records.append(f"{arc},{record_hash(data)},{len(data)}")
        records.append(f"{info}/RECORD,,")
        zf.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(2021, 11, 16, 0, 0, 0)),
                    "\n".join(records) + "\n", zipfile.ZIP_DEFLATED)
    return path


def detectron2_wheel(out: Path) -> Path:
    """Detectron2 v0.6's Python sources as install_detectron2.sh put them into this environment."""
    find = [sys.executable, "-c",
            "import detectron2, os; print(detectron2.__version__); print(os.path.dirname(detectron2.__file__))"]
    res = subprocess.run(find, capture_output=True, text=True)
    if res.returncode != 0:
        print("[prepare_gpu_wheels] detectron2 is not importable: running tools/install_detectron2.sh", flush=True)
        subprocess.run(["bash", str(REPO / "tools" / "install_detectron2.sh")], check=True,
                       env={**os.environ, "PY": sys.executable})
        res = subprocess.run(find, capture_output=True, text=True, check=True)
    version, folder = res.stdout.split()
    if version != "0.6":
        print(f"[prepare_gpu_wheels] warning: detectron2 {version} here, the suite is tested with v0.6")
    return pack_pure_wheel(Path(folder), "detectron2", version,
                           "Detectron2 Python sources (tools/install_detectron2.sh; C++ ops not built)", out)


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist entries that apply on Linux / CPython 3.12 without extras."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def unmet_requirements(wheels: list[Path]) -> list[str]:
    """Requirements of the carried wheels that neither they nor the image provide."""
    carried = {canonicalize_name(w.name.split("-")[0]) for w in wheels}
    return sorted({f"{w.name.split('-')[0]} needs {r}" for w in wheels for r in wheel_requirements(w)
                   if canonicalize_name(r.name) not in carried | IMAGE_HAS})


def tree_bytes() -> int:
    """Bytes of the working tree that the device tool sends (tracked + untracked, not ignored)."""
    res = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True)
    paths = {p for p in res.stdout.decode().split("\0") if p}
    return sum((REPO / p).stat().st_size for p in paths if (REPO / p).is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("Gather the GPU check's wheels (Python 3.12, manylinux x86_64)")
    p.add_argument("--out", type=Path, default=REPO / "gpu_wheels")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="wheels + working tree must fit this")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    wheels = []
    for name, pin, binary in WHEELS:
        wheels.append(fetch(name, version_of(name, pin), binary, args.out))
        print(f"[prepare_gpu_wheels] {wheels[-1].name}", flush=True)
    wheels.append(detectron2_wheel(args.out))
    print(f"[prepare_gpu_wheels] {wheels[-1].name}", flush=True)
    unmet = unmet_requirements(wheels)
    wheel_mib = sum(w.stat().st_size for w in wheels) / 2 ** 20
    tree_mib = tree_bytes() / 2 ** 20
    total = wheel_mib + tree_mib
    print(f"[prepare_gpu_wheels] {len(wheels)} wheels, {wheel_mib:.2f} MiB; working tree {tree_mib:.2f} MiB; "
          f"together {total:.2f} MiB of the {args.limit_mib:.0f} MiB that may travel")
    rel = os.path.relpath(args.out, REPO)
    print(f"[prepare_gpu_wheels] device run: command 'tools/gpu_check.sh', carry ['{rel}'], timeout_s 480")
    status = 0
    if unmet:
        print("[prepare_gpu_wheels] not carried and not in the GPU image:\n  " + "\n  ".join(unmet), file=sys.stderr)
        status = 1
    if total > args.limit_mib:
        print(f"[prepare_gpu_wheels] too large: {total:.2f} MiB > {args.limit_mib:.0f} MiB", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
