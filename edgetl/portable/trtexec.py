"""The TensorRT versions edgetl builds and runs engines with, and the one trtexec line both sides build with.

`edgetl build` (package, Python API) records this line in its result; the device builds with it when edgetl
is not installed there. One function, so an engine built either way has the same settings (workspace,
optimisation level, TF32, strong typing).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

# Precision lives in the ONNX graph, so the network is strongly typed: TensorRT 10.0 is the first release
# where that is complete (8.6 would need weak-typing builder flags and would build another engine).
TENSORRT_MIN = (10, 0)
TENSORRT_RANGE = "10.0 or newer"
WORKSPACE_MIB = 1024
OPT_LEVEL = 3


def tensorrt_unsupported(version) -> Optional[str]:
    """Why TensorRT `version` ('10.3.0.30', '8.6.2') cannot build or run edgetl's engines; None when it can."""
    m = re.match(r"(\d+)(?:\.(\d+))?", str(version or ""))
    if m is None:
        return f"TensorRT version {version!r} is not a version number"
    if (int(m.group(1)), int(m.group(2) or 0)) < TENSORRT_MIN:
        return f"TensorRT {version} is too old: edgetl needs {TENSORRT_RANGE} (strongly typed networks)"
    return None


def trtexec_command(onnx, plan, input_name: str, sample_shape: Sequence[int], batch: Tuple[int, int, int], *,
                    version=None, workspace_mib: int = WORKSPACE_MIB, timing_cache=None,
                    opt_level: int = OPT_LEVEL, version_compatible: bool = False, dla_core: Optional[int] = None,
                    tf32: bool = False, dynamic: bool = True, trtexec: str = "trtexec") -> list:
    """argv of the trtexec run that builds the engine `edgetl build` builds; it only builds
    (`--skipInference`): timing is bench's job. `batch`: (min, opt, max) of the profile; `dynamic` False
    for a static-batch graph, which takes no shapes. `version`: the TensorRT that will run it, refused
    outside the supported range (ValueError)."""
    if version is not None and tensorrt_unsupported(version):
        raise ValueError(tensorrt_unsupported(version))
    shape = lambda n: f"{input_name}:" + "x".join(str(d) for d in (n, *sample_shape))  # noqa: E731
    args = [str(trtexec), f"--onnx={onnx}", "--stronglyTyped"]  # 11.x is always strongly typed and accepts it
    if dynamic:
        args += [f"--minShapes={shape(batch[0])}", f"--optShapes={shape(batch[1])}", f"--maxShapes={shape(batch[2])}"]
    args.append(f"--memPoolSize=workspace:{int(workspace_mib)}M")
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    args.append(f"--builderOptimizationLevel={int(opt_level)}")
    if not tf32:
        args.append("--noTF32")  # an fp32 engine computes in fp32 unless asked
    if version_compatible:
        args.append("--versionCompatible")
    if dla_core is not None:
        args += [f"--useDLACore={int(dla_core)}", "--allowGPUFallback"]
    return args + [f"--saveEngine={plan}", "--skipInference"]
