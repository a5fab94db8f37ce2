"""`edgetl export`'s output: the export report as a table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgetl.presentation.console import console as default_console


def print_report(report: Any, console: Console | None = None) -> None:
    """`report`: an ExportResult or the export_report.json dict."""
    console = console or default_console
    if hasattr(report, "model_dump"):
        report = report.model_dump(mode="json")
    p = report["parity"]
    table = Table(title=escape(f"export: {report['model']} -> {report['model_file']}"), show_header=False)
    table.add_column("item")
    table.add_column("value")

    def io(entries):
        return escape(", ".join(f"{e['name']} {e['dtype']} [{', '.join(map(str, e['shape'] or []))}]" for e in entries))

    table.add_row("opset", str(report["opset"]))
    table.add_row("input", io(report["inputs"]))
    table.add_row("output", io(report["outputs"]))
    table.add_row("batch", "dynamic" if report["dynamic_batch"] else f"static {report['static_batch']}")
    table.add_row("preprocessing", "fused in graph (uint8 NHWC RGB in)" if report["fuse_preprocess"]
                  else "outside graph (float32 NCHW, normalised)")
    simp = report["simplification"]
    table.add_row("nodes", f"{report['nodes_before_simplify']} -> {report['nodes_after_simplify']}"
                  + ("" if simp.get("kept") else escape(f"  ({simp.get('note') or 'not simplified'})")))
    ok = "[green]pass[/]" if p["passed"] else "[red]FAIL[/]"
    table.add_row("parity", f"{ok} on {p['n_images']} val images: max |delta logit| {p['max_abs_diff']:.2e}, "
                  f"scaled {p['max_scaled_diff']:.2e} (tol {p['tolerance']:g}), "
                  f"top-1 agreement {p['top1_agreement']:.2%}")
    table.add_row("top-1 on them", f"torch {p['torch_top1']:.3f}, onnx {p['onnx_top1']:.3f}")
    size = report["file_size_bytes"] / 2**20
    table.add_row("file", f"{size:.2f} MiB" + escape(f" (weights in {report['external_data']})" if report["external_data"] else ""))
    table.add_row("sha256", report["sha256"])
    table.add_row("time", f"{report['seconds']['total']:.1f} s")
    console.print(table)


render_export = print_report
