"""edgetl.portable: the part of edgetl the bare device runs. It may import only the standard library, numpy
and itself (relatively, since the bundle unpacks it as a top-level package next to the entry point)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import edgetl.portable
from edgetl.ship.bundle import DEVICE_SCRIPT
from edgetl.portable import jetson, manifest, rows

PORTABLE = Path(edgetl.portable.__file__).parent
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in a file, at any depth (functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is None and node.level == 1:
            found += [(1, a.name) for a in node.names]  # from . import cuda: each name must be a sibling
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


OPTIONAL = {"tensorrt", "onnxruntime"}  # JetPack's or pip's, imported only inside the function that needs it


def _in_functions(path: Path) -> set[str]:
    """Top-level names imported inside a function body (deferred: the module imports without them)."""
    found = set()
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    found.add((node.module or "").split(".")[0])
    return found


def test_portable_imports_only_stdlib_numpy_and_itself():
    files = sorted(PORTABLE.glob("*.py"))
    assert {"__init__.py", "engines.py", "forms.py", "hashing.py", "jetson.py", "manifest.py", "rows.py", "cuda.py", "facts.py",
            "measure.py", "protocol.py", "runners.py", "store.py", "builders.py", "trtexec.py"} <= {f.name for f in files}
    siblings = {f.stem for f in files}
    bad = []
    for f in files:
        deferred = _in_functions(f) & OPTIONAL
        for level, module in _imports(f):
            if level == 0 and module.split(".")[0] in deferred:
                continue
            if level == 1:  # from .x import y: a sibling that exists
                if module.split(".")[0] not in siblings:
                    bad.append(f"{f.name}: from .{module} (no such sibling)")
            elif level > 1:
                bad.append(f"{f.name}: reaches outside portable/ (level {level} import of {module!r})")
            elif module.split(".")[0] not in STDLIB | {"numpy"}:
                bad.append(f"{f.name}: imports {module}")
    assert bad == []


def test_the_check_would_catch_a_foreign_import(tmp_path):
    # the same walk over a file that imports edgetl inside a function: the test above is not vacuous
    f = tmp_path / "x.py"
    f.write_text("import os\n\ndef g():\n    from edgetl.io import read_json\n    from .. import cli\n")
    assert (0, "edgetl.io") in _imports(f) and (2, "") in _imports(f)
    g = tmp_path / "y.py"
    g.write_text("import tensorrt\n\ndef h():\n    import onnxruntime\n")
    assert _in_functions(g) == {"onnxruntime"}  # a module-level tensorrt import is not deferred


def test_device_entry_point_imports_only_what_jetpack_has():
    """The device script: standard library, numpy, TensorRT / onnxruntime and the shipped portable/, never edgetl."""
    roots = {module.split(".")[0] for level, module in _imports(DEVICE_SCRIPT) if level == 0}
    assert roots <= STDLIB | {"numpy", "tensorrt", "onnxruntime", "portable"}, roots
    assert "portable" in roots and "edgetl" not in roots


def test_latency_stats_are_rounded_and_complete():
    s = rows.latency_stats([0.001, 0.002, 0.003, 0.0041], batch_size=4)
    lat = s["latency_ms"]
    assert list(lat) == list(rows.LATENCY_KEYS)
    assert lat["mean"] == 2.525 and lat["p50"] == 2.5 and lat["min"] == 1.0 and lat["max"] == 4.1
    assert lat["std"] == pytest.approx(1.1519, abs=1e-4) and lat["p99"] == pytest.approx(4.067, abs=1e-4)
    assert s["throughput_ips"] == round(4 / 2.525e-3, 2) and s["iterations"] == 4
    with pytest.raises(ValueError):
        rows.latency_stats([], 1)


def test_batches_tile_and_pad():
    x = np.arange(3 * 2).reshape(3, 2)
    assert rows.batch_of(x, 5).tolist() == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3]]
    assert rows.batch_of(x, 2).tolist() == [[0, 1], [2, 3]]
    padded, n = rows.pad_batch(x[:2], 4)
    assert n == 2 and padded.tolist() == [[0, 1], [2, 3], [0, 1], [0, 1]]
    full, n = rows.pad_batch(x, 3)
    assert n == 3 and full.tolist() == x.tolist()


def test_make_row_has_every_key_in_order():
    r = rows.make_row(backend="onnxruntime", precision="fp32", batch_size=2, device="cpu", model_file="model.onnx",
                      seconds=[0.002, 0.004], warmup=1, timed="t", top1=0.91234567, n_images=10, where="device")
    assert tuple(r) == rows.ROW_KEYS
    assert r["top1"] == 0.912346 and r["flags"] == [] and r["latency_ms"]["mean"] == 3.0
    from edgetl.portable.isa import cpu_int8_isa

    assert r["cpu_isa"] == cpu_int8_isa()["isa"] and r["cpu_isa"]  # e.g. "x86 AVX2, no VNNI"
    gpu = rows.make_row(backend="tensorrt", precision="int8", batch_size=1, device="cuda", model_file="m.plan",
                        seconds=[0.001], warmup=1, timed="t", top1=None, n_images=None, where="local")
    assert gpu["cpu_isa"] is None


def test_jetson_power_mode_and_clocks_in_mhz(tmp_path):
    assert jetson.parse_power_mode("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert jetson.parse_power_mode("NV Power Mode: 15W\n2") == {"name": "15W", "id": 2}
    assert jetson.parse_power_mode("") is None
    sysfs = tmp_path / "sys"
    gpu = sysfs / "class" / "devfreq" / "17000000.ga10b"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text("1300500000\n")  # Hz
    cpu = sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    cpu.mkdir(parents=True)
    (cpu / "scaling_cur_freq").write_text("2201600\n")  # kHz
    assert jetson.clocks(str(sysfs)) == {"gpu_mhz": 1300.5, "cpu0_mhz": 2201.6}
    assert jetson.clocks(str(tmp_path / "absent")) is None
    assert jetson.parse_l4t("# R36 (release), REVISION: 4.3, GCID: 38968081") == "R36.4.3"


def test_manifest_refuses_paths_outside_the_bundle(tmp_path):
    for bad in ("/etc/passwd", "../x", "a/../../x", "C:/x", "..\\x"):
        with pytest.raises(manifest.ManifestError, match="outside the bundle"):
            manifest.inside(tmp_path, bad)
    assert manifest.inside(tmp_path, "data/inputs.npy") == str(tmp_path / "data" / "inputs.npy")
    with pytest.raises(manifest.ManifestError, match="no manifest"):
        manifest.load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "edgetl-bundle/1"}')
    with pytest.raises(manifest.ManifestError, match="edgetl-bundle/1"):
        manifest.load_manifest(tmp_path)
