"""The one CUDA layer (edgetl/portable/cuda.py): finding no GPU is an answer, never an exception.

Each kind of machine is a stand-in libcudart compiled from tests/fake_cudart.c and loaded through the real
ctypes path ($EDGETL_CUDART): no driver, no device, zero devices, a library without the symbols, a file that is
not a library, a loader that raises, and a working 'GPU' (host memory) for the copy and graph-capture calls.
Then the places that ask: the TensorRT backend, engine facts, `edgetl bench`, `edgetl build --target rtx`,
and the device script's `facts`.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.portable import cuda

NO_GPU = {
    "no-driver": "the NVIDIA driver is missing or older than this CUDA runtime (cudaErrorInsufficientDriver "
                 "from CUDA runtime 12.4, libcudart-no-driver.so)",
    "no-device": "no CUDA GPU is visible (cudaErrorNoDevice from CUDA runtime 12.4, libcudart-no-device.so)",
    "zero": "no CUDA GPU is visible (libcudart-zero.so counts 0 devices)",
}


@pytest.mark.parametrize("mode", sorted(NO_GPU))
def test_each_no_gpu_machine_is_one_reason(fake_cudart, mode):
    fake_cudart(mode)
    assert cuda.why_no_gpu() == NO_GPU[mode]
    with pytest.raises(cuda.CudaUnavailable, match="^" + NO_GPU[mode].replace("(", r"\(").replace(")", r"\)")):
        cuda.gpu_facts()


def test_a_library_without_the_calls_is_a_reason(fake_cudart):
    lib = fake_cudart("no-symbol")
    assert cuda.why_no_gpu() == (f"{lib}: not a usable CUDA runtime (AttributeError: {lib}: undefined symbol: "
                                 "cudaGetDeviceCount)")


def test_a_missing_or_broken_file_is_a_reason(fake_cudart, tmp_path):
    fake_cudart(tmp_path / "nowhere" / "libcudart.so.12")
    reason = cuda.why_no_gpu()
    assert reason.startswith(f"no CUDA runtime (libcudart) could be loaded (looked in: {tmp_path}/nowhere/libcudart.so.12 (")
    not_elf = tmp_path / "libcudart.so"
    not_elf.write_text("not a shared library\n" * 100)
    cuda._CACHED.clear()
    fake_cudart(not_elf)
    assert cuda.why_no_gpu() == f"no CUDA runtime (libcudart) could be loaded (looked in: {not_elf} (invalid ELF header))"


def test_a_loader_or_a_call_that_raises_is_a_reason(fake_cudart_lib):
    """What cuda-python's mixed install did (RuntimeError: Failed to dlopen libcuda.so.1), at either step."""

    def dlopen(path):
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    with pytest.raises(cuda.CudaUnavailable, match=r"looked in: /x/libcudart.so \(Failed to dlopen libcuda.so.1\)"):
        cuda.Runtime.probe(["/x/libcudart.so"], dlopen=dlopen)

    class Raising:
        def __getattr__(self, name):
            def call(*args):
                raise RuntimeError('Function "cuInit" not found')
            return call

    with pytest.raises(cuda.CudaUnavailable, match='not a usable CUDA runtime .RuntimeError: Function "cuInit" not found'):
        cuda.Runtime.probe(["/x/libcudart.so"], dlopen=lambda path: Raising())


def test_the_first_library_that_finds_a_gpu_is_kept(fake_cudart_lib):
    """A CUDA 13 runtime on a CUDA 12 driver says 'insufficient driver'; the next candidate may work."""
    rt = cuda.Runtime.probe([str(fake_cudart_lib("no-driver")), str(fake_cudart_lib("gpu"))])
    assert rt.path.endswith("libcudart-gpu.so") and rt.runtime_version == "12.4"
    with pytest.raises(cuda.CudaUnavailable, match="cudaErrorInsufficientDriver"):  # the first reason, not the last
        cuda.Runtime.probe([str(fake_cudart_lib("no-driver")), str(fake_cudart_lib("zero"))])


def test_facts_copies_and_graph_capture_on_a_gpu(fake_cudart):
    lib = ctypes.CDLL(str(fake_cudart("gpu")))
    lib.fake_log.restype = ctypes.c_char_p
    assert cuda.why_no_gpu() is None
    assert cuda.gpu_facts() == {"gpu_name": "Orin (fake)", "compute_capability": "8.7", "cuda_driver": "12.2"}

    stream = cuda.Stream()
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    buf = cuda.DeviceBuffer(x.nbytes)
    back = np.zeros_like(x)
    stream.upload(buf, x)
    stream.download(back, buf)
    stream.synchronize()
    assert (back == x).all()  # pointers and sizes crossed ctypes intact

    lib.fake_clear()

    def failing_work():
        raise RuntimeError("TensorRT enqueue failed")

    with pytest.raises(RuntimeError, match="enqueue failed"):
        stream.capture(failing_work)
    assert lib.fake_log() == b"begin:1;end:0;destroy_graph:99;"  # thread-local capture, ended, partial graph freed
    lib.fake_clear()
    graph = stream.capture(lambda: None)
    graph.launch(stream)
    graph.destroy()
    buf.free()
    buf.free()  # a second free is a no-op, not a double free
    stream.destroy()
    assert lib.fake_log() == (b"begin:1;end:0;instantiate:99;launch:100;destroy_exec:100;destroy_graph:99;free:1;"
                              b"stream_destroy:5;")


def test_the_tensorrt_backend_and_engine_facts_say_why_not(fake_cudart):
    from edgetl.tensorrt.engine import facts_here
    from edgetl.runtime import backend_class

    fake_cudart("no-driver")
    reason = backend_class("tensorrt").why_not_here("cuda")
    assert reason and "cudaErrorInsufficientDriver" in reason and "\n" not in reason
    here, missing = facts_here()
    if "tensorrt_rtx" in missing and "not installed" not in missing["tensorrt_rtx"].message:
        assert "cudaErrorInsufficientDriver" in missing["tensorrt_rtx"].message


def test_a_backend_whose_check_raises_is_a_skipped_row(exported_copy, monkeypatch):
    """An optional backend cannot crash a command: `edgetl bench` skips it with the exception as its reason."""
    from edgetl.cli import app
    from edgetl.runtime import backend_class

    def broken(cls, device):
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    monkeypatch.setattr(backend_class("tensorrt"), "available", classmethod(broken))
    run = exported_copy("bench-raising")
    res = CliRunner().invoke(app, ["bench", str(run), "--backends", "onnxruntime,tensorrt", "--precisions", "fp32",
                                   "--iterations", "2", "--warmup", "1", "--batch-sizes", "1"])
    assert res.exit_code == 0, res.output
    (skip,) = json.loads((run / "bench.json").read_text())["skipped"]
    assert skip == {"backend": "tensorrt", "precision": None, "reason": "tensorrt: could not check whether it runs "
                    "here (RuntimeError: Failed to dlopen libcuda.so.1)"}
    assert [r["backend"] for r in json.loads((run / "bench.json").read_text())["rows"]] == ["onnxruntime"]


@pytest.mark.parametrize("mode", ["no-driver", "no-symbol"])
def test_rtx_build_ahead_of_time_whatever_cuda_says(fake_cudart, family_graphs, tmp_path, mode):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is x86-64 Linux/Windows only (pip install 'edgetl[rtx]')")
    from edgetl.cli import app

    fake_cudart(mode)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.onnx",):
        shutil.copy(family_graphs("resnet18") / name, run / name)
    res = CliRunner().invoke(app, ["build", str(run), "--target", "rtx", "--precision", "fp32", "--batch", "1,1,2"])
    assert res.exit_code == 0, res.output
    (plan,) = run.glob("engines/*/model.fp32.plan")
    sidecar = json.loads(plan.with_suffix(".json").read_text())
    assert sidecar["library"] == "tensorrt_rtx" and sidecar["gpu_name"] is None


def _device_folder(tmp_path: Path) -> Path:
    """The device entry point next to portable/, as a bundle lays them out."""
    import edgetl

    root = Path(edgetl.__file__).parent
    folder = tmp_path / "bundle"
    shutil.copytree(root / "portable", folder / "portable", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "device" / "edgetl_device.py", folder)
    return folder


@pytest.mark.parametrize("mode, gpu", [("gpu", "Orin (fake)"), ("no-device", None), ("no-symbol", None)])
def test_device_facts_answer_whatever_cuda_says(fake_cudart, tmp_path, mode, gpu):
    lib = fake_cudart(mode)
    folder = _device_folder(tmp_path)
    res = subprocess.run([sys.executable, str(folder / "edgetl_device.py"), "facts"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    assert facts["gpu"] == gpu
    if gpu:
        assert facts["compute_capability"] == "8.7" and facts["no_gpu_reason"] is None
    else:
        assert facts["compute_capability"] is None and Path(lib).name in facts["no_gpu_reason"]
