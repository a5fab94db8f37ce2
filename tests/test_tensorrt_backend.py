"""The tensorrt backend's checks that need no GPU: every boolean TensorRT returns is checked, the output buffer
is sized from the engine's own output shape, CUDA graphs are re-captured on a batch-size change. (Thread-local
capture and ending a failed capture are the CUDA layer's, tested in test_cuda.py.)

No GPU here, so the engine, context and CUDA runtime are small recording fakes; the logger, enums and
dtype mapping are TensorRT-RTX's own where it is installed (the backend's real-GPU test is in test_rtx.py).
"""

from __future__ import annotations

import hashlib
import types

import numpy as np
import pytest

from edgetl.tensorrt import engine as E
from edgetl.card import ModelCard
from edgetl.errors import EdgetlError
from edgetl.io import write_bytes, write_json
from edgetl.portable import engines as P
from edgetl.portable import cuda as _cuda

rtx = pytest.importorskip("tensorrt_rtx", reason="borrows TensorRT-RTX's logger and enums (pip install 'edgetl[rtx]')")

CARD = ModelCard(model="resnet18", class_names=["a", "b", "c", "d"], input_size=(3, 8, 8), resize=8,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
OUTPUT_WIDTH = 7  # the engine's own output width: deliberately not the card's 4 classes


class FakeContext:
    def __init__(self, ok_shape=True, ok_address=True):
        self.ok_shape, self.ok_address = ok_shape, ok_address
        self.shape = None
        self.addresses: dict[str, int] = {}
        self.enqueues = 0

    def set_input_shape(self, name, shape):
        if self.ok_shape:
            self.shape = tuple(shape)
        return self.ok_shape

    def get_tensor_shape(self, name):
        return (self.shape[0], OUTPUT_WIDTH) if name == "logits" else self.shape

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return self.ok_address

    def execute_async_v3(self, stream):
        self.enqueues += 1
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, context):
        self.context = context

    def get_tensor_name(self, i):
        return ("images", "logits")[i]

    def get_tensor_mode(self, name):
        return rtx.TensorIOMode.INPUT if name == "images" else rtx.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return rtx.DataType.FLOAT

    def get_tensor_shape(self, name):
        return (-1, 3, 8, 8)  # a dynamic batch: the profile says the range

    def get_tensor_profile_shape(self, name, profile):
        return (1, 3, 8, 8), (1, 3, 8, 8), (8, 3, 8, 8)

    def create_execution_context(self):
        return self.context


class FakeBuffer:
    def __init__(self, nbytes):
        self.nbytes, self.ptr = nbytes, 1000 + nbytes

    def free(self):
        self.ptr = None


class FakeStream:
    def __init__(self):
        self.captures, self.handle_int = [], 7

    def upload(self, dst, host):
        pass

    def download(self, host, src):
        host[...] = 1.0

    def synchronize(self):
        pass

    def capture(self, work):
        work()
        graph = types.SimpleNamespace(launches=0, destroyed=False)
        graph.launch = lambda stream: setattr(graph, "launches", graph.launches + 1)
        graph.destroy = lambda: setattr(graph, "destroyed", True)
        self.captures.append(graph)
        return graph

    def destroy(self):
        pass


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    """Factory: fake_engine(context) -> a plan with a valid sidecar whose library is a fake over TensorRT-RTX."""

    def make(context):
        data = b"fake engine"
        plan = tmp_path / "engines" / "x" / "model.fp32.plan"
        write_bytes(plan, data)
        write_json(E.sidecar_path(plan), P.make_sidecar(
            library="tensorrt_rtx", library_version=rtx.__version__, gpu_name=None, compute_capability=None,
            target_compute_capabilities=["8.9"], precision="fp32",
            profile={"input": "images", "min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [8, 3, 8, 8]},
            source_onnx="model.onnx", source_onnx_sha256="a" * 64, engine_sha256=hashlib.sha256(data).hexdigest(),
            builder="edgetl build", edgetl_version="0", card=CARD.model_dump(mode="json"), built_at="now"))
        runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda blob: FakeEngine(context))
        fake_trt = types.SimpleNamespace(__name__="tensorrt_rtx", __version__=rtx.__version__, ILogger=rtx.ILogger,
                                         TensorIOMode=rtx.TensorIOMode, nptype=rtx.nptype,
                                         Runtime=lambda logger: runtime)
        monkeypatch.setattr(E, "import_flavour", lambda library: fake_trt)
        monkeypatch.setattr(E, "machine_facts", lambda library, trt=None: {
            "library": "tensorrt_rtx", "library_version": rtx.__version__, "gpu_name": "NVIDIA GeForce RTX 4090",
            "compute_capability": "8.9"})
        monkeypatch.setattr(_cuda, "Stream", FakeStream)
        monkeypatch.setattr(_cuda, "DeviceBuffer", FakeBuffer)
        return plan

    return make


def _backend(plan, **options):
    from edgetl.runtime import create_backend

    return create_backend("tensorrt", plan, device="cuda", **options)


def test_output_buffer_from_the_engine_shape_and_graphs_recaptured_per_batch(fake_engine):
    context = FakeContext()
    with _backend(fake_engine(context), cuda_graph=True) as be:
        assert be._runner.d_in.nbytes == 8 * 3 * 8 * 8 * 4  # profile max batch
        assert be._runner.d_out.nbytes == 8 * OUTPUT_WIDTH * 4  # the engine's output at that batch, not 8 x 4 classes
        assert set(context.addresses) == {"images", "logits"}
        x = np.zeros((3, 3, 8, 8), np.float32)
        assert be.infer(x).shape == (3, OUTPUT_WIDTH)
        assert be.infer(x).shape == (3, OUTPUT_WIDTH)
        stream = be._runner.stream
        assert len(stream.captures) == 1 and stream.captures[0].launches == 2  # captured once, replayed
        assert be.infer(x[:2]).shape == (2, OUTPUT_WIDTH)  # a new batch size: the old graph goes, a new one
        assert len(stream.captures) == 2 and stream.captures[0].destroyed and not stream.captures[1].destroyed
        assert context.shape == (2, 3, 8, 8)
    assert stream.captures[1].destroyed  # deactivate frees the last graph


@pytest.mark.parametrize("context, message", [
    (None, "could not create an execution context"),
    (FakeContext(ok_address=False), "refused the GPU address of images"),
    (FakeContext(ok_shape=False), r"refused input shape \(8, 3, 8, 8\)"),
])
def test_refusals_from_tensorrt_are_one_line(fake_engine, context, message):
    with pytest.raises(EdgetlError, match=message) as e:
        _backend(fake_engine(context)).activate()
    assert "\n" not in e.value.message
