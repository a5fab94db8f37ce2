"""Fake quantization in PyTorch for quantization-aware training, with NVIDIA ModelOpt (the optional `qat` extra).

ModelOpt's TensorQuantizer does the arithmetic (round-to-int8 and clamp in the forward pass, a straight-through
gradient in the backward pass, on CPU and GPU alike); edgetl decides where, from the graph it writes:

  - the modules that get quantizers are exactly the Conv/Gemm/MatMul nodes that edgetl.quantize.placement
    quantizes in the TensorRT form, minus the layers the PTQ search kept in float; everything else (the
    classifier GEMV, tiny convs, squeeze-excite gates, norms, attention) stays float, as in the graph. ModelOpt's
    own defaults would quantize every Conv2d/Linear, the classifier included;
  - inputs per tensor with the PTQ calibration's range (fixed while training, as ModelOpt's QAT keeps amax);
  - weights per output channel with a dynamic amax, max |w| of the current weights: the rule ONNX Runtime's
    quantizer applies to the trained weights when the graph is written. Per-channel max scaling commutes with
    the BatchNorm folding the exporter does (each output channel is scaled by one number), so the unfolded
    weights trained here quantize to the folded weights' grid.

Not modules, so not fake-quantized here: a residual Add's skip input and a pool's input. The graph quantizes them
with their calibrated ranges; the skip input is usually the previous block's output, the same tensor (and
Q/DQ pair) as the next convolution's input, which is trained.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any

from edgetl.errors import QuantizeError, first_line
from edgetl.quantize.graph import quiet_logging
from edgetl.quantize.placement import tensorrt_placement

INSTALL_HINT = 'pip install -e ".[qat]"'
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")  # graph nodes a module's input and weight quantizers stand for


def modelopt_quantization() -> Any:
    """modelopt.torch.quantization, or one QuantizeError line that says how to install it."""
    try:
        with quiet_modelopt():  # on a CPU-only machine torch's extension loader logs a CUDA_HOME line at import
            import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise QuantizeError(f"qat needs NVIDIA ModelOpt (nvidia-modelopt), which cannot be imported "
                            f"({first_line(e)})", INSTALL_HINT) from None
    return mtq


def library_version() -> str:
    from importlib.metadata import version

    return f"nvidia-modelopt {version('nvidia-modelopt')}"


@contextlib.contextmanager
def quiet_modelopt():
    """ModelOpt's notes (a CUDA_HOME log line, "Cannot find transformers package", torch.jit deprecation warnings
    from its import) say nothing about edgetl's use of it: kept off the user's terminal, around ModelOpt only."""
    with quiet_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def module_name(node_name: str, modules: dict[str, Any]) -> str | None:
    """The module a TorchScript-exported node came from: '/blocks/blocks.1/blocks.1.0/conv_pw/Conv' ->
    'blocks.1.0.conv_pw' (a scope with a dot is already a full path), '/conv_stem/Conv_output_0' (onnxslim's
    renaming) -> 'conv_stem'. A wrapper's prefix ('model.' of a fused-preprocessing export) is dropped."""
    path = ""
    for part in node_name.strip("/").split("/")[:-1]:
        path = part if (not path or "." in part) else f"{path}.{part}"
    while path and path not in modules:
        path = path.partition(".")[2]
    return path or None


@dataclass
class Places:
    """Where the fake quantizers go: module name -> the graph node it becomes, and the quantized nodes no
    module stands for (they are trained in float)."""

    modules: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)


def fake_quant_places(base, model, exclude: list[str]) -> Places:
    """The modules of `model` behind the Conv/Gemm/MatMul nodes of the float graph `base` that the TensorRT
    form quantizes, less `exclude`."""
    from torch import nn

    plan = tensorrt_placement(base)
    modules = dict(model.named_modules())
    places = Places()
    for node in base.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.name not in plan.quantize or node.name in exclude:
            continue
        name = module_name(node.name, modules)
        if name is not None and isinstance(modules[name], (nn.Conv2d, nn.Linear)) and name not in places.modules:
            places.modules[name] = node.name
        else:
            places.unmapped.append(node.name)
    return places


def _register_subclasses(model) -> None:
    """ModelOpt converts modules by exact class; timm's subclasses (Conv2dSame in the tf_ EfficientNets) read
    `self.weight` in their forward as the base class does, so the base's quantized form serves them."""
    from modelopt.torch.quantization.nn import QuantModuleRegistry
    from modelopt.torch.quantization.nn.modules.quant_conv import _QuantConv2d
    from modelopt.torch.quantization.nn.modules.quant_linear import _QuantLinear
    from torch import nn

    for m in model.modules():
        cls = type(m)
        quant = _QuantConv2d if isinstance(m, nn.Conv2d) else _QuantLinear if isinstance(m, nn.Linear) else None
        if quant is not None and cls not in QuantModuleRegistry:
            QuantModuleRegistry.register({cls: f"edgetl.{cls.__module__}.{cls.__qualname__}"})(
                type(f"_Quant{cls.__name__}", (quant,), {}))


def add_fake_quant(model, places: Places, input_ranges: dict[str, tuple[float, float]], calib_batch) -> int:
    """Put int8 quantizers on `places` (input per tensor, weight per output channel), every other quantizer
    ModelOpt inserts disabled; input ranges from `input_ranges` (module name -> (lo, hi)), else ModelOpt's own
    max over `calib_batch`. Returns the number of modules quantized."""
    import torch

    mtq = modelopt_quantization()
    _register_subclasses(model)
    quant_cfg: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for name in places.modules:
        quant_cfg += [{"quantizer_name": f"{name}.weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
                      {"quantizer_name": f"{name}.input_quantizer", "cfg": {"num_bits": 8, "axis": None}}]
    with quiet_modelopt(), torch.no_grad(), contextlib.redirect_stdout(None):  # it prints a line per conversion
        mtq.quantize(model, {"quant_cfg": quant_cfg, "algorithm": "max"}, lambda m: m(calib_batch))
    for name in places.modules:
        module = model.get_submodule(name)
        if name in input_ranges:
            lo, hi = input_ranges[name]
            module.input_quantizer.amax = max(abs(lo), abs(hi))
        module.weight_quantizer.reset_amax()  # dynamic: per channel, from the weights as they train
    enabled = sum(1 for n, q in model.named_modules() if n.endswith("weight_quantizer") and q.is_enabled)
    if enabled != len(places.modules):
        raise QuantizeError(f"ModelOpt quantized {enabled} of the {len(places.modules)} modules asked for")
    return enabled


def remove_fake_quant(model) -> None:
    """Every quantizer off: the model computes in float again (its trained weights are what is exported)."""
    for name, module in model.named_modules():
        if name.endswith("_quantizer") and hasattr(module, "disable"):
            module.disable()
