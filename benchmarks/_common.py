"""Helpers shared by the benchmark scripts (random-init runs live in edgetl.demo.scaffold)."""

from __future__ import annotations

import platform

from edgetl.demo.scaffold import export_and_quantize, make_run  # noqa: F401 (re-exported for the scripts)


def machine() -> str:
    from edgetl.bench import system_info

    info = system_info()
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    return f"{info['cpu']} ({info['cpu_count']} cores){gpu}, {platform.system()} {platform.release()}"
