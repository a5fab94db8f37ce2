"""The bundle's files as the device uses them: its evaluation arrays, where its engines go, when one already
there (or in another bundle of the run) serves -- the package's names (engines.py) and mismatch rule applied
to files -- and the sidecar of an engine built there."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Tuple

from . import engines
from .hashing import sha256_file
from .manifest import ManifestError, inside, model_file


def read_json(path) -> Any:
    """The parsed file, or None when it is missing or not JSON (a sidecar that cannot be read serves nothing)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path, obj) -> None:
    """Via a temporary name: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def engine_paths(bundle: Path, machine: dict, precision: str) -> Tuple[Path, Path]:
    """BUNDLE/engines/<cuda gpu name>-trt<version>/model.<p>.plan and its sidecar: the package's names."""
    folder = Path(bundle) / "engines" / engines.engine_dir_name(machine["gpu_name"], "tensorrt",
                                                                machine["library_version"])
    plan = folder / engines.plan_name(precision)
    return plan, Path(engines.sidecar_for(str(plan)))


def profile_for(io: dict, max_batch: int) -> dict:
    """The optimisation profile: batch 1..max_batch, or N..N for a static-batch graph (export --static-batch N)."""
    first, *chw = io["input"]["shape"]
    fixed = None if io["input"].get("dynamic_batch", True) else int(first)
    lo, hi = (fixed, fixed) if fixed else (1, max_batch)
    return {"input": io["input"]["name"], "min": [lo, *chw], "opt": [hi, *chw], "max": [hi, *chw]}


def reusable(plan: Path, onnx_sha: str, machine: dict, max_batch: int) -> bool:
    """An engine is reused only when its sidecar says it was built from this ONNX, the package's mismatch
    rule accepts it on this machine, its profile covers the batch sizes asked for and its bytes are the
    ones the sidecar recorded."""
    sidecar = read_json(engines.sidecar_for(str(plan)))
    if not Path(plan).is_file() or not isinstance(sidecar, dict) or sidecar.get("format") != engines.SIDECAR_FORMAT:
        return False
    profile_max = (sidecar.get("profile") or {}).get("max") or [0]
    return (sidecar.get("source_onnx_sha256") == onnx_sha and engines.engine_mismatch(sidecar, machine) is None
            and int(profile_max[0] or 0) >= max_batch and sidecar.get("engine_sha256") == sha256_file(plan))


def find_sibling_engine(bundle: Path, folder: str, precision: str, onnx_sha: str, machine: dict,
                        max_batch: int) -> Optional[Tuple[Path, Path]]:
    """(plan, sidecar) of an engine another bundle of this run built from the same ONNX for this machine.

    A new bundle (another --max-images, another edgetl version) with an unchanged model needs no new
    engine: building one takes minutes on a Jetson."""
    for other in sorted(Path(bundle).parent.iterdir()):
        if other == bundle or not other.is_dir() or other.name.startswith("."):
            continue
        plan = other / "engines" / folder / engines.plan_name(precision)
        if reusable(plan, onnx_sha, machine, max_batch):
            return plan, Path(engines.sidecar_for(str(plan)))
    return None


def adopt_engine(source, plan: Path, sidecar: Path) -> None:
    """Copy another bundle's engine and sidecar here, each via a temporary name, the sidecar last."""
    plan.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(source, (plan, sidecar)):
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def write_sidecar(plan: Path, manifest: dict, precision: str, machine: dict, *, builder: str, profile: dict,
                  build_seconds, trtexec=None, own=None) -> dict:
    """The sidecar of an engine built on the device, through the package's own `make_sidecar` (format
    edgetl-engine/2), so that `edgetl bench` and `edgetl triton` load it as their own. `own`: the settings
    the builder used (`edgetl build`'s sidecar, or the trtexec line's), kept."""
    rel = model_file(manifest, precision)
    own = own if isinstance(own, dict) else {}
    kept = {k: own[k] for k in ("workspace_mib", "builder_optimization_level", "version_compatible", "dla_core")
            if own.get(k) is not None}
    sidecar = engines.make_sidecar(
        library="tensorrt", library_version=machine["library_version"], gpu_name=machine["gpu_name"],
        compute_capability=machine["compute_capability"], precision=precision, profile=profile, source_onnx=rel,
        source_onnx_sha256=manifest["files"][rel]["sha256"], engine_sha256=sha256_file(plan), builder=builder,
        edgetl_version=str(manifest.get("edgetl_version")), card=manifest.get("card"),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=build_seconds, cuda_driver=machine.get("cuda_driver"), l4t_release=machine.get("l4t_release"),
        trtexec=trtexec, **kept)
    write_json(engines.sidecar_for(str(plan)), sidecar)
    return sidecar


def load_data(bundle, manifest: dict):
    """The bundle's preprocessed images and labels; ManifestError unless they are plain arrays of the model's
    input shape (never unpickled: a .npy with objects is code). Needs numpy, imported here: `facts` does not."""
    import numpy as np

    arrays = []
    for key in ("inputs", "labels"):
        rel = manifest["data"][key]
        try:
            arrays.append(np.load(inside(bundle, rel), allow_pickle=False))
        except (OSError, ValueError) as e:  # ValueError: pickled objects, or not a .npy at all
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ManifestError(f"{rel}: not a plain numpy array ({text})") from None
    x, y = arrays
    want = tuple(manifest["io"]["input"]["shape"][1:])
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or not len(y) or (
            all(isinstance(d, int) for d in want) and tuple(x.shape[1:]) != want):
        raise ManifestError(f"{manifest['data']['inputs']}: images of shape {x.shape} with {y.shape} labels, the "
                            f"model takes (N, {', '.join(map(str, want))}) with one label each")
    return x, y
