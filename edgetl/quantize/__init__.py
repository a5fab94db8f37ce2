"""`edgetl quantize`: precision baked into the ONNX graph, scored with ONNX Runtime before any engine exists.

INT8 -- explicit QuantizeLinear/DequantizeLinear (Q/DQ) written by ONNX Runtime's QDQ quantizer, in one
of two forms (each scored on its own):

  tensorrt (model.int8.onnx)      what TensorRT 10 and 11 build as a strongly typed network: int8
                                  activations and weights, symmetric (zero point 0), per-channel weights
                                  on the output-channel axis, per-tensor activations, no bias
                                  quantization, a Q/DQ pair on weights, shared Q/DQ pairs, Q/DQ only on
                                  the layer inputs TensorRT fuses (edgetl.quantize.placement: a residual Add
                                  gets its skip input only, the classifier GEMV none). These are the
                                  settings NVIDIA ModelOpt passes to this same quantizer.
  cpu      (model.int8.cpu.onnx)  uint8 activations, int8 weights (U8S8; 7-bit, or uint8 U8U8, on x86
                                  without VNNI) with outputs quantized too, the pattern ONNX Runtime's CPU
                                  kernels fuse into QLinearConv/QGemm/QLinearAdd.

Each form is scored as its target computes it: the TensorRT form with exact Q/DQ arithmetic (ONNX Runtime,
optimizations off), the cpu form through this CPU's fused int8 kernels (its ISA recorded).

FP16 -- float16 body, float32 inputs and outputs, overflow-prone ops kept in float32 (an op block list).

Every written graph is topologically sorted, passes `check_graph` (zero points, per-channel axes, no dangling
float path, placement) and onnx.checker's full check (edgetl.export.write), and is scored against the fp32
model on the run's val split; RUN/quant_report.json keeps one entry per precision/target. A model still over
max_drop after layer exclusion is written, marked over_budget, and raises QuantizeBudgetMissed (exit 3); with
`qat`, quantization-aware training comes first (qat): the model fine-tunes with fake quantization at the same
places, and its Q/DQ graph replaces PTQ's when it scores at least as high.

One concept per module:
  settings     QuantizeSettings: every option, its default and limits
  run          quantize(run, cfg, events) -> QuantizeResult: the stage
  int8, fp16   one precision each: convert, score, write, describe (a report entry)
  graph        graph surgery: the float model as read, Q/DQ written by ONNX Runtime, float inputs
  check        check_graph: the structural rules a written Q/DQ graph meets, one named check each
  sensitivity  the exclusion search (which layers stay float to meet max_drop)
  fakequant    NVIDIA ModelOpt's fake quantizers on the modules behind the graph's quantized nodes
  qat          quantization-aware training: train, export, write and score the QAT graph, its report block
  scoring      top-1 and logits of a graph against fp32, on the scoring images, exact or fused
  isa          this CPU's int8 instruction set (what fused int8 kernels compute here)
  report       quant_report.json as models (QuantReport, QuantEntry), read and merged
"""

from edgetl.quantize.check import check_graph
from edgetl.quantize.fp16 import to_fp16
from edgetl.quantize.graph import quantizer_settings
from edgetl.quantize.report import (Fp16Entry, GraphSummary, Int8Entry, QuantEntry, QuantReport, entry_key,
                                    read_report)
from edgetl.quantize.run import QuantizeResult, quantize
from edgetl.quantize.settings import QuantizeSettings

__all__ = ["Fp16Entry", "GraphSummary", "Int8Entry", "QuantEntry", "QuantReport", "QuantizeResult",
           "QuantizeSettings", "check_graph", "entry_key", "quantize", "quantizer_settings", "read_report",
           "to_fp16"]
