"""What `edgetl build` prints: the library's warnings, the engine and its sidecar, the equivalent trtexec line."""

from __future__ import annotations

from edgetl.presentation.console import console


def render_build(result) -> None:
    """`result`: an edgetl.tensorrt.build.BuildResult (or its dict)."""
    r = result if isinstance(result, dict) else result.model_dump()
    for line in r["warnings"]:
        console.print(f"warning: {line}", markup=False, soft_wrap=True)
    console.print(f"engine: {r['plan']} ({r['seconds']:.1f} s, {r['layers']} network layers)\n"
                  f"sidecar: {r['sidecar']}", markup=False, soft_wrap=True)
    if r["trtexec"]:
        console.print(f"same build with trtexec:\n  {r['trtexec']}", markup=False, soft_wrap=True)
