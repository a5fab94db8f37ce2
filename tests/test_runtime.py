"""The Backend interface: torch and onnxruntime on a real tiny run give the same logits; bad use is one error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import BackendUnavailable, EdgetlError, RunDirError
from edgetl.rundir import RunDir
from edgetl.runtime import Backend, create_backend, resolve_model_file


@pytest.fixture(scope="module")
def exported(exported_copy) -> Path:
    return exported_copy("run")


@pytest.fixture(scope="module")
def images(exported):
    from edgetl.card import ModelCard
    from edgetl.data import load_arrays, read_splits

    return load_arrays(read_splits(RunDir(exported).splits)[1], ModelCard.from_onnx(RunDir(exported).onnx), limit=6)[0]


def test_torch_and_onnxruntime_agree(exported, images):
    run = RunDir(exported)
    with create_backend("torch", resolve_model_file(run, "torch")) as t, \
            create_backend("onnxruntime", resolve_model_file(run, "onnxruntime"), threads=1) as o:
        a, b = t.infer(images), o.infer(images)
        assert a.shape == b.shape == (6, 5) and a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-3)
        assert t.card == o.card  # both read the card from their own file: safetensors and ONNX metadata
        assert o.describe()["provider"] == "CPUExecutionProvider"
        assert t.describe()["timed"] == "forward pass on the CPU (eager)"
        t.synchronize()
        o.synchronize()


def test_life_cycle_and_input_checks(exported, images):
    be = create_backend("onnxruntime", RunDir(exported).onnx)
    with pytest.raises(EdgetlError, match=r"infer\(\) before activate\(\)"):
        be.infer(images)
    with be:
        assert be.is_active and be.input_shape() == (3, 32, 32) and be.input_dtype() == np.float32
        with pytest.raises(EdgetlError, match=r"input of shape \(6, 32, 32, 3\)"):
            be.infer(images.transpose(0, 2, 3, 1))
    assert not be.is_active


def test_bad_backend_precision_device(exported):
    with pytest.raises(BackendUnavailable, match="unknown backend 'caffe'"):
        create_backend("caffe", exported)
    with pytest.raises(EdgetlError, match="precision 'int8' is not one of"):
        create_backend("torch", exported, precision="int8").activate()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider is not available"):
            create_backend("onnxruntime", RunDir(exported).onnx, device="cuda").activate()
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            create_backend("torch", exported, device="cuda").activate()


def test_resolve_model_file_prefers_the_cpu_int8_form_on_cpu(exported, tmp_path):
    run = RunDir(shutil.copytree(exported, tmp_path / "run"))
    with pytest.raises(RunDirError, match="model.int8.onnx is missing"):
        resolve_model_file(run, "onnxruntime", "int8", "cuda")
    shutil.copy(run.onnx, run.onnx_for("int8"))  # stand-ins: only the file choice is under test here
    assert resolve_model_file(run, "onnxruntime", "int8", "cpu") == run.onnx_for("int8")
    shutil.copy(run.onnx, run.onnx_for("int8", "cpu"))
    assert resolve_model_file(run, "onnxruntime", "int8", "cpu").name == "model.int8.cpu.onnx"
    assert resolve_model_file(run, "onnxruntime", "int8", "cuda").name == "model.int8.onnx"
    assert resolve_model_file(run, "torch", "fp16", "cuda") == run.weights


def test_tensorrt_backend_refuses_the_cpu(exported):
    # the device is checked before TensorRT is imported, so this runs everywhere
    with pytest.raises(EdgetlError, match="runs on the GPU"):
        create_backend("tensorrt", exported / "x.plan", device="cpu").activate()


@pytest.mark.gpu
def test_torch_cuda_fp16_close_to_fp32(exported, images):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    with create_backend("torch", exported) as cpu, create_backend("torch", exported, device="cuda", precision="fp16") as gpu:
        np.testing.assert_allclose(gpu.infer(images), cpu.infer(images), atol=5e-2)


@pytest.fixture(scope="module")
def static4(exported_copy) -> Path:
    """A real export with its batch dimension fixed at 4."""
    from edgetl.export.run import export
    from edgetl.export.settings import ExportSettings

    run = exported_copy("static4")
    export(run, ExportSettings(static_batch=4, parity_images=4))
    return run


def test_bytes_and_fixed_batch_padding(exported, static4, images):
    """The same graph from its path or its bytes gives the same logits; a fixed-batch graph pads a short batch,
    drops the padding's rows and runs any number of images through logits() in chunks."""
    path = RunDir(static4).onnx
    with create_backend("onnxruntime", RunDir(exported).onnx, threads=1) as dyn:
        assert dyn.fixed_batch is None
        want = dyn.infer(images)
        np.testing.assert_allclose(dyn.logits(images, batch_size=4), want, atol=1e-5)
    with create_backend("onnxruntime", path.read_bytes(), threads=1) as from_bytes, \
            create_backend("onnxruntime", path, threads=1) as from_path:
        assert from_bytes.fixed_batch == from_path.fixed_batch == 4
        assert from_bytes.card == from_path.card and from_bytes.describe()["model_file"] is None
        one = from_bytes.infer(images[:1])  # padded to 4, one row back
        assert one.shape == (1, 5)
        np.testing.assert_allclose(one, want[:1], atol=1e-4)
        got = from_path.logits(images, batch_size=64)  # 6 images: one batch of 4 and one padded batch of 2
        assert got.shape == (6, 5)
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_array_equal(from_bytes.logits(images, batch_size=1), got)
        with pytest.raises(EdgetlError, match="a batch of 6, the model has a fixed batch of 4"):
            from_path.infer(images)


def test_input_dtype_is_checked_before_the_runtime(exported, images):
    with create_backend("onnxruntime", RunDir(exported).onnx) as o, create_backend("torch", exported) as t:
        for be in (o, t):
            with pytest.raises(EdgetlError, match="input of dtype float64, the model takes float32 NCHW"):
                be.infer(images.astype(np.float64))
            with pytest.raises(EdgetlError, match="input of dtype uint8"):
                be.infer(images.astype(np.uint8))


def test_bytes_that_are_not_onnx_are_one_error():
    from edgetl.errors import ModelError

    with pytest.raises(ModelError, match="in-memory model, 9 bytes.*not a readable ONNX model"):
        create_backend("onnxruntime", b"not onnx!").activate()
    with pytest.raises(EdgetlError, match="torch backend: takes a model file, not bytes"):
        create_backend("torch", b"weights").activate()


def test_registry_names_and_declarations():
    from edgetl.choices import BackendName, PrecisionName, values
    from edgetl.runtime import BACKENDS, Backend, backend_class, backend_names

    assert backend_names() == BACKENDS == values(BackendName)  # one vocabulary, defined once
    for name in backend_names():
        cls = backend_class(name)
        assert issubclass(cls, Backend) and cls.name == name
        assert cls.devices and cls.precisions and set(cls.precisions) <= set(values(PrecisionName))
        for precision in values(PrecisionName):
            reason = cls.unsupported(precision, "cuda")
            assert (reason is None) == (precision in cls.precisions), (name, precision)
    assert backend_class("tensorrt").devices == ("cuda",)
    assert backend_class("tensorrt").device_for("cpu") == "cuda"  # an engine runs on the GPU whatever was asked
    assert backend_class("onnxruntime").device_for("cpu") == "cpu"
    assert backend_class("torch").bench_precisions("cpu") == ("fp32",)
    assert backend_class("torch").bench_precisions("cuda") == ("fp32", "fp16")
    assert backend_class("onnxruntime").options_for(threads=2, cuda_graph=True) == {"threads": 2}
    assert backend_class("tensorrt").options_for(threads=2, cuda_graph=True) == {"cuda_graph": True}
    with pytest.raises(BackendUnavailable, match="unknown backend 'caffe'.*torch, onnxruntime, tensorrt"):
        backend_class("caffe")


def test_available_says_why_not_here():
    import onnxruntime as ort
    import torch

    from edgetl.runtime import backend_class

    assert backend_class("torch").available("cpu") is None
    assert backend_class("onnxruntime").available("cpu") is None
    ort_cuda = backend_class("onnxruntime").available("cuda")
    assert (ort_cuda is None) == ("CUDAExecutionProvider" in ort.get_available_providers())
    if ort_cuda:
        assert "CUDAExecutionProvider is not available" in ort_cuda
    assert "unknown device 'tpu'" in backend_class("onnxruntime").available("tpu")
    torch_cuda = backend_class("torch").available("cuda")
    assert (torch_cuda is None) == torch.cuda.is_available()
    if torch_cuda:
        assert "no CUDA device" in torch_cuda
    if not _tensorrt_runs_here():
        assert "TensorRT" in backend_class("tensorrt").available("cuda")


def _tensorrt_runs_here() -> bool:
    from edgetl.tensorrt.engine import facts_here

    return bool(facts_here()[0])


def test_register_backend_adds_a_backend_and_refuses_a_second_of_the_same_name(exported, images):
    """A new backend is one registered class: create_backend, resolve_model_file and infer() reach it."""
    from edgetl.card import ModelCard
    from edgetl.runtime import backend_names, register_backend
    from edgetl.runtime.registry import _REGISTRY

    @register_backend
    class ConstantBackend(Backend):
        name = "constant-test"
        devices = ("cpu",)
        precisions = ("fp32",)

        @classmethod
        def model_file(cls, run, precision, device):
            return run.onnx

        def activate_impl(self):
            return ModelCard.from_onnx(self.require_path())

        def infer_impl(self, x):
            return np.full((len(x), self.card.num_classes), 7.0)

    try:
        assert "constant-test" in backend_names()
        assert resolve_model_file(RunDir(exported), "constant-test") == RunDir(exported).onnx
        with create_backend("constant-test", RunDir(exported).onnx) as be:
            out = be.logits(images, batch_size=4)
            assert out.dtype == np.float32 and out.shape == (6, 5) and (out == 7.0).all()
        with pytest.raises(TypeError, match="registered twice"):
            register_backend(type("Other", (ConstantBackend,), {}))
    finally:
        _REGISTRY.pop("constant-test", None)
