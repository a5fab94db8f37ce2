"""What `edgetl triton` prints: each model of the repository and the command that serves it."""

from __future__ import annotations

from pathlib import Path

from edgetl.presentation.console import console


def render_triton(result) -> None:
    """`result`: an edgetl.ship.triton.TritonResult (or its dict)."""
    r = result if isinstance(result, dict) else result.model_dump()
    path = Path(r["path"])
    for model, backend in r["models"].items():
        console.print(f"{path / model}  ({backend})", markup=False, soft_wrap=True)
    console.print(f"serve with: tritonserver --model-repository={path.resolve()}", markup=False, soft_wrap=True)
