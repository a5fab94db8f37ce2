"""This CPU's int8 instruction set: it decides what ONNX Runtime's fused int8 kernels compute (and so the CPU
form's score and how the CPU form is quantized), and it is recorded beside every fused score."""

from __future__ import annotations

import platform
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_int8_isa() -> dict:
    """The int8 instruction set of this CPU, which decides what ONNX Runtime's fused int8 kernels compute:
    {"isa": words, "arch": machine, "int8_saturates": True on x86 without VNNI (ONNX Runtime's documented
    case for reduce_range)}. Read from /proc/cpuinfo's flags (Linux); elsewhere only the machine is known."""
    arch = platform.machine().lower()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return describe_isa(arch, flags)


def describe_isa(arch: str, flags: set[str]) -> dict:
    """cpu_int8_isa()'s answer for a machine name and its /proc/cpuinfo flags (or ARM features)."""
    x86 = arch in ("x86_64", "amd64", "i686", "x86")
    if x86:
        vnni = "avx512_vnni" if "avx512_vnni" in flags else "avx_vnni" if "avx_vnni" in flags else None
        base = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE" if flags else "unknown ISA"
        isa = f"x86 {base} with VNNI ({vnni})" if vnni else f"x86 {base}, no VNNI"
        return {"isa": isa, "arch": arch, "int8_saturates": vnni is None and bool(flags)}
    if arch in ("aarch64", "arm64"):
        dot = "asimddp" in flags
        isa = ("ARM64 with dot product (asimddp" + (", i8mm" if "i8mm" in flags else "") + ")" if dot
               else "ARM64, no dot product" if flags else "ARM64")
        return {"isa": isa, "arch": arch, "int8_saturates": False}
    return {"isa": arch or "unknown CPU", "arch": arch, "int8_saturates": False}
