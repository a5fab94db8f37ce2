"""What `edgetl bundle` prints: the bundle, its files and sizes, the reference top-1, the tarball."""

from __future__ import annotations

from edgetl.presentation.console import console


def render_bundle(result) -> None:
    """`result`: an edgetl.ship.bundle.BundleResult (or its dict)."""
    r = result if isinstance(result, dict) else result.model_dump()
    console.print(f"bundle {r['path']} ({'unchanged' if r['reused'] else 'written'}), sha256 {r['sha256']}",
                  markup=False, soft_wrap=True)
    for rel, size in r["files"].items():
        console.print(f"  {rel:<28} {size:>12,} B", markup=False)
    ref = r["reference_top1"]
    console.print(f"{r['images']} eval images; fp32 PyTorch top-1 on them: {'n/a' if ref is None else f'{ref:.4f}'}",
                  markup=False)
    if r["tarball"] is not None:
        console.print(f"tarball {r['tarball']}  (on the device: tar xzf it, then python3 <dir>/edgetl_device.py verify)",
                      markup=False, soft_wrap=True)
