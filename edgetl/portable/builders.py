"""The two ways the device builds an engine, both ending in the package's settings: `edgetl build` where edgetl
is installed, else trtexec with the package's own line (trtexec.py). Each writes the plan to `out` and
returns the build settings it used, for the sidecar."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import engines
from .store import read_json
from .trtexec import OPT_LEVEL, WORKSPACE_MIB, trtexec_command


class BuildError(Exception):
    """A builder that failed or wrote nothing (one line)."""


def check_call(command: list, what: str) -> None:
    res = subprocess.run(command, capture_output=True, text=True)
    if res.returncode != 0:
        tail = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()][-3:]
        raise BuildError(f"{what} failed (exit {res.returncode}): {' | '.join(tail)}")


def with_edgetl(bundle: Path, precision: str, profile: dict, out: Path) -> dict:
    """`edgetl build` on the bundle; its engine copied to `out`; its sidecar (the settings it used) returned."""
    hi = profile["max"][0]
    check_call(["edgetl", "build", str(bundle), "--precision", precision, "--batch",
                f"{profile['min'][0]},{hi},{hi}"], "edgetl build")
    built = sorted((Path(bundle) / "engines").glob(f"*/{engines.plan_name(precision)}"),
                   key=lambda p: p.stat().st_mtime)
    if not built:
        raise BuildError(f"`edgetl build` finished but wrote no engines/*/{engines.plan_name(precision)}")
    shutil.copyfile(built[-1], out)
    return read_json(engines.sidecar_for(str(built[-1])))


def with_trtexec(trtexec: str, onnx: Path, io: dict, profile: dict, version: str, out: Path) -> dict:
    """The package's trtexec line for the TensorRT `version` here; `io`: the manifest's, for a static batch."""
    batch = (profile["min"][0], profile["opt"][0], profile["max"][0])
    check_call(trtexec_command(onnx, out, profile["input"], profile["max"][1:], batch, version=version,
                               dynamic=bool(io["input"].get("dynamic_batch", True)), trtexec=trtexec), "trtexec")
    return {"workspace_mib": WORKSPACE_MIB, "builder_optimization_level": OPT_LEVEL}
