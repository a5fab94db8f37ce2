"""The deploy bundle: everything a device needs to build and benchmark a run's model, and nothing else.

RUN/bundles/<precision>/
    model[.<precision>].onnx     the precision-baked graph(s) (int8: the TensorRT Q/DQ form, plus the
                                 CPU form when quantize wrote one, for onnxruntime on the device's CPU)
    card.json                    the model card (the same one inside the ONNX metadata)
    data/inputs.npy, labels.npy  validation images already preprocessed per the card, so the device needs
                                 no image decoding or albumentations
    edgetl_device.py             the device-side entry point (standard library + numpy + TensorRT/ORT)
    portable/*.py                edgetl's stdlib + numpy part (manifest check, engine names and sidecar, bench
                                 rows, Jetson facts) that the entry point imports: the same files the package
                                 imports as edgetl.portable, so both sides agree by construction
    manifest.json                every file's size and SHA-256, the edgetl version, the graph's I/O, and
                                 the reference fp32 PyTorch top-1 on data/ (for the device's top1_drop)

The bundle's identity is the SHA-256 of manifest.json. Bundling is deterministic, so the same run
and settings give the same hash; `edgetl deploy` uses it to skip what a device already holds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import Field

from edgetl import __version__
from edgetl.choices import EnginePrecisionName
from edgetl.errors import DeployError, RunDirError
from edgetl.io import atomic_path, sha256_file
from edgetl.portable.forms import FP32, INT8, PRECISIONS, U8S8, form_for, form_named
from edgetl.portable.manifest import BUNDLE_FORMAT, ENTRY_POINT, MANIFEST, PORTABLE_DIR, file_problems
from edgetl.rundir import RunDir
from edgetl.stage import SILENT, Events, Result, Settings, record_settings

DEVICE_SCRIPT = Path(__file__).resolve().parents[1] / "device" / ENTRY_POINT
PORTABLE_SOURCE = Path(__file__).resolve().parents[1] / "portable"
DEFAULT_MAX_IMAGES = 256
INPUTS, LABELS = "data/inputs.npy", "data/labels.npy"


class BundleSettings(Settings):
    """What `edgetl bundle` packs."""

    precision: EnginePrecisionName = Field("fp32", description="which precision-baked ONNX file to ship")
    out: Optional[Path] = Field(None, description="also write this .tar.gz (for offline devices)")
    tar: bool = Field(False, description="also write RUN/bundles/<run>-<precision>.tar.gz")
    max_images: int = Field(DEFAULT_MAX_IMAGES, ge=1, description="validation images carried (preprocessed) for the "
                            "device's accuracy")


class BundleResult(Result):
    """The bundle directory and what it holds (manifest.json in it is the full record)."""

    path: Path
    sha256: str  # of manifest.json: the bundle's identity
    reused: bool  # the bundle already there was made from the same sources and still verifies
    tarball: Optional[Path] = None
    files: dict[str, int]  # path inside the bundle -> size in bytes
    images: int  # preprocessed validation images carried
    reference_top1: Optional[float]  # fp32 PyTorch top-1 on them (None without model.safetensors)


def bundle(run_path: str | os.PathLike, cfg: BundleSettings, events: Events = SILENT) -> BundleResult:
    """`edgetl bundle`: write (or reuse) RUN/bundles/<precision>/, and the tarball where one is asked for."""
    run = RunDir(run_path)
    tarball = cfg.out
    if tarball is None and cfg.tar:
        tarball = run.bundles_dir / f"{run.path.resolve().name}-{cfg.precision}.tar.gz"
    events.status("bundling")
    b = make_bundle(run.path, cfg.precision, tarball=tarball, max_images=cfg.max_images)
    record_settings(run.path, "bundle", cfg)
    return BundleResult(path=b.path, sha256=b.sha256, reused=b.reused, tarball=b.tarball,
                        files={rel: b.manifest["files"][rel]["size"] for rel in b.files},
                        images=b.manifest["data"]["n"], reference_top1=b.manifest["reference"].get("top1"))


@dataclass
class Bundle:
    """A bundle on disk, as make_bundle (and `edgetl deploy`) use it."""

    path: Path
    manifest: dict
    sha256: str
    reused: bool = False
    tarball: Path | None = None
    files: list[str] = field(default_factory=list)

    @property
    def short_hash(self) -> str:
        return self.sha256[:16]


def bundle_dir(run: RunDir, precision: str) -> Path:
    return run.bundles_dir / precision


def make_bundle(run_path: str | os.PathLike, precision: str = "fp32", out_dir: str | os.PathLike | None = None,
                tarball: str | os.PathLike | None = None, max_images: int = DEFAULT_MAX_IMAGES) -> Bundle:
    """Write (or reuse, when its sources are unchanged and it verifies) the bundle directory; optionally a tarball."""
    run = RunDir(run_path)
    if max_images < 1:
        raise DeployError(f"max_images {max_images}: must be at least 1")
    if tarball is not None:
        check_tarball_name(Path(tarball))  # before the bundle is built, not after
    models = model_files(run, precision)
    target = Path(out_dir) if out_dir is not None else bundle_dir(run, precision)
    source = {
        "models": {k: sha256_file(p) for k, p in sorted(models.items())},
        "weights_sha256": sha256_file(run.weights) if run.weights.exists() else None,
        "splits_sha256": sha256_file(run.splits),
        "max_images": max_images,
        "entry_point_sha256": sha256_file(DEVICE_SCRIPT),
        "portable_sha256": {p.name: sha256_file(p) for p in portable_files()},
        "edgetl_version": __version__,
    }
    bundle = _existing(target, source)
    if bundle is None:
        bundle = _write(run, target, precision, models, source, max_images)
    if tarball is not None:
        bundle.tarball = write_tarball(bundle.path, Path(tarball), f"{run.path.resolve().name}-{precision}")
    return bundle


def model_files(run: RunDir, precision: str) -> dict[str, Path]:
    """The ONNX file(s) a bundle of `precision` carries; one clear error when the run lacks them (or splits.json)."""
    if precision not in PRECISIONS:
        raise DeployError(f"precision {precision}: not one of {', '.join(PRECISIONS)}")
    run.require(hint="give the folder that `edgetl finetune --out` wrote")
    primary = run.onnx_for(precision)
    if not primary.exists():
        have = [p for p in PRECISIONS if run.onnx_for(p).exists()]
        hint = form_for(precision).hint("RUN") + (f", or bundle a precision the run has: {', '.join(have)}"
                                                  if have and precision != FP32 else "")
        raise RunDirError(f"{run.path}: {primary.name} is missing, so there is no {precision} model to bundle", hint)
    models = {precision: primary}
    cpu = run.path / U8S8.file
    if precision == INT8 and cpu.exists():  # the CPU form travels with the int8 bundle where the run has it
        models[U8S8.manifest_key] = cpu
    run.require(run.splits, hint="the bundle's evaluation images come from the run's validation split (splits.json)")
    from edgetl.card import ModelCard, check_form

    for key, path in models.items():
        ModelCard.from_onnx(path)  # one line for an unreadable or changed file (its recorded SHA-256), before parsing it here
        form = form_named(key)
        check_form(path, form.precision, form.target, hint=f"re-run `{form.command('RUN')}`")
        if _external_data(path):
            raise DeployError(f"{path}: stores its weights in external data files, which bundles do not carry yet",
                              "re-export without external data (models under 2 GB fit in one file)")
    return models


def _external_data(path: Path) -> bool:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def graph_io(path: str | os.PathLike) -> dict:
    """Name, element type and shape (None for a symbolic dim) of the graph's first input and output."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]

    def describe(value) -> dict:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "elem_type": onnx.TensorProto.DataType.Name(t.elem_type), "shape": dims,
                "dynamic_batch": bool(dims) and dims[0] is None}

    return {"input": describe(inputs[0]), "output": describe(proto.graph.output[0]),
            "inputs": [describe(v) for v in inputs], "outputs": [describe(v) for v in proto.graph.output]}


def _existing(target: Path, source: dict) -> Bundle | None:
    """The bundle already at `target` if it was made from the same sources and still verifies."""
    manifest_path = target / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("source") != source:
        return None
    try:
        verify_dir(target, manifest)
    except DeployError:
        return None
    return Bundle(target, manifest, sha256_file(manifest_path), reused=True, files=sorted(manifest["files"]))


def verify_dir(path: Path, manifest: dict) -> None:
    """Local check of a bundle directory against its manifest (the device runs the same check: portable.manifest)."""
    problems = file_problems(path, manifest)
    if problems:
        raise DeployError(f"{path}: {problems[0]}", "re-run `edgetl bundle` to rewrite it")


def portable_files() -> list[Path]:
    """The modules of edgetl.portable the bundle ships (sorted, so bundles stay deterministic)."""
    return sorted(PORTABLE_SOURCE.glob("*.py"))


_PRELUDE = '''import sys
if sys.version_info < (3, 8):
    sys.stderr.write("edgetl-device: error: Python %s is too old: edgetl's device side needs 3.8 or newer "
                     "(edgetl deploy --python PATH)\\n" % sys.version.split()[0])
    sys.exit(2)
import importlib.abc, importlib.util


class _Sources(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves edgetl's portable/ package from the sources below, as if it sat next to the entry point."""

    def find_spec(self, name, path=None, target=None):
        if name in _SOURCES:
            return importlib.util.spec_from_loader(name, self, origin="edgetl:" + name, is_package=name == "portable")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(_SOURCES[module.__name__], module.__spec__.origin, "exec"), module.__dict__)


sys.meta_path.insert(0, _Sources())
exec(compile(_ENTRY, "edgetl_device.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


def device_program() -> bytes:
    """One Python program made of the entry point and portable/, for `python - ARGS` over ssh: what runs on
    the device is always this edgetl's own code, never files there that could have changed, and the check of
    a device (deploy's first step) needs no upload. Sources travel as string literals and the prelude checks
    the Python version first, so a too-old Python says so instead of failing to parse."""
    sources = {("portable" if p.stem == "__init__" else f"portable.{p.stem}"): p.read_text(encoding="utf-8")
               for p in portable_files()}
    head = f"_SOURCES = {sources!r}\n_ENTRY = {DEVICE_SCRIPT.read_text(encoding='utf-8')!r}\n"
    prelude, _, rest = _PRELUDE.partition("import importlib.abc")
    return (prelude + head + "import importlib.abc" + rest).encode("utf-8")


def _eval_arrays(run: RunDir, card, max_images: int):
    """The first `max_images` of an even spread over the run's validation split, preprocessed per the card."""
    from edgetl.data import load_arrays, read_splits

    _, val = read_splits(run.splits)
    if list(val.classes) != list(card.class_names):
        raise DeployError(f"{run.splits}: classes {val.classes} differ from the model card's {card.class_names}",
                          "the ONNX file and splits.json come from different runs")
    if len(val) == 0:
        raise DeployError(f"{run.splits}: the validation split is empty")
    items = val.spread(max_images)  # every class, even in a small sample
    x, y = load_arrays(items, card)
    return items, x, y.astype(np.int64)


def _reference(run: RunDir, items, y: np.ndarray) -> dict:
    """fp32 PyTorch top-1 on the bundle's images: the yardstick for the device's top1_drop."""
    if not run.weights.exists():
        return {"backend": "torch", "precision": "fp32", "top1": None, "n": int(len(y)),
                "note": "model.safetensors absent: no PyTorch reference"}
    from edgetl.evaluate.run import evaluate
    from edgetl.runtime import create_backend

    with create_backend("torch", run.weights, device="cpu", precision="fp32") as be:
        top1 = evaluate(be, items)["top1"]  # fed in the torch model's own input format, as `edgetl eval` does
    # 6 decimals, as `edgetl bench` records its reference and rows: the same images give the same top1_drop
    return {"backend": "torch", "precision": "fp32", "top1": round(top1, 6), "n": int(len(y))}


def _write(run: RunDir, target: Path, precision: str, models: dict[str, Path], source: dict, max_images: int) -> Bundle:
    from edgetl.card import ModelCard

    card = ModelCard.from_onnx(models[precision])
    io_info = graph_io(models[precision])
    items, x, y = _eval_arrays(run, card, max_images)
    reference = _reference(run, items, y)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        names = {}
        for key, path in models.items():
            shutil.copyfile(path, staging / path.name)
            names[key] = path.name
        (staging / "card.json").write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        (staging / "data").mkdir()
        np.save(staging / INPUTS, np.ascontiguousarray(x), allow_pickle=False)
        np.save(staging / LABELS, y, allow_pickle=False)
        shutil.copyfile(DEVICE_SCRIPT, staging / ENTRY_POINT)
        (staging / PORTABLE_DIR).mkdir()
        for module in portable_files():
            shutil.copyfile(module, staging / PORTABLE_DIR / module.name)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        manifest = {
            "format": BUNDLE_FORMAT,
            "edgetl_version": __version__,
            "run": run.path.resolve().name,
            "precision": precision,
            "models": names,
            "io": io_info,
            "card": card.model_dump(mode="json"),
            "data": {"inputs": INPUTS, "labels": LABELS, "n": int(len(y)), "input_format": card.input_format,
                     "shape": list(x.shape), "dtype": x.dtype.name, "from": "the run's validation split (splits.json)"},
            "reference": reference,
            "entry_point": ENTRY_POINT,
            "source": source,
            "files": {rel: {"sha256": sha256_file(staging / rel), "size": (staging / rel).stat().st_size} for rel in files},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _replace_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return Bundle(target, manifest, sha256_file(target / MANIFEST), files=files)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap a finished directory into place: readers see the old bundle or the new one, never a mix."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_tarball_name(out: Path) -> None:
    if not out.name.endswith((".tar.gz", ".tgz")):
        raise DeployError(f"out {out}: give a .tar.gz file name")
    if out.is_dir():
        raise DeployError(f"out {out}: is a folder", "give a .tar.gz file name")


def write_tarball(directory: Path, out: Path, root: str) -> Path:
    """A reproducible .tar.gz of `directory` under `root/`: sorted names, fixed mtimes, no owners."""
    check_tarball_name(out)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            entries = sorted(p for p in directory.rglob("*")
                             if not any(part.startswith(".") or part == "__pycache__"
                                        for part in p.relative_to(directory).parts))
            tar.addfile(_tarinfo(root, directory))
            for path in entries:
                info = _tarinfo(f"{root}/{path.relative_to(directory).as_posix()}", path)
                if path.is_file():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                elif path.is_dir():
                    tar.addfile(info)
    return out


def _tarinfo(name: str, path: Path) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size = path.stat().st_size
        info.mode = 0o755 if path.name == ENTRY_POINT else 0o644
    return info


def read_manifest(path: str | os.PathLike) -> dict:
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DeployError(f"{path}: no readable {MANIFEST} ({e})", "make the bundle with `edgetl bundle RUN`") from None


__all__ = ["BUNDLE_FORMAT", "Bundle", "BundleResult", "BundleSettings", "DEVICE_SCRIPT", "bundle", "device_program", "ENTRY_POINT", "MANIFEST", "PRECISIONS", "bundle_dir",
           "graph_io", "make_bundle", "model_files", "read_manifest", "verify_dir", "write_tarball"]
