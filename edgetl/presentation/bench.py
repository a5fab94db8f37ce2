"""`edgetl bench`'s terminal output: the rich table fitted to the terminal's width, what its numbers mean, the
flags, skips and notes. bench.md's full table is edgetl.bench.markdown; the plot is edgetl.plots."""

from __future__ import annotations

from typing import Any

from edgetl.bench.markdown import COLUMNS, drop_tests_line, fmt, row_cells
from edgetl.bench.plan import skipped_lines

_TEXT = ("backend", "precision", "device", "model file", "flags", "row", "file")
COMPACT_COLUMNS = ("row", "file", "p50 ms", "p99 ms", "img/s", "speed-up", "top-1", "drop")
_SHORT = {"onnxruntime": "ort", "tensorrt": "trt"}
FLAGGED = "!"  # marks a flagged row in the compact table; its flags are listed under it


def _style(r: dict[str, Any]) -> str | None:
    flags = r.get("flags") or []
    return "red" if any("below the reference" in f for f in flags) else ("yellow" if flags else None)


def row_name(r: dict[str, Any]) -> str:
    """The compact table's row label: `ort int8 bs8`."""
    return f"{_SHORT.get(r['backend'], r['backend'])} {r['precision']} bs{r['batch_size']}"


def short_file(model_file: str) -> str:
    """`model.int8.cpu.onnx` -> `int8.cpu.onnx`, `engines/<gpu>-trt10.3/model.fp16.plan` -> `fp16.plan`,
    `model.safetensors` -> `safetensors`: the format and form; the precision is in the row label."""
    name = model_file.replace("\\", "/").rsplit("/", 1)[-1]
    return name.removeprefix("model.") or name


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 100 else f"{value:.1f}" if value < 10000 else f"{value:.0f}"


def _compact_cells(r: dict[str, Any], full_paths: bool, p99: bool) -> list[str]:
    lat, ips = r["latency_ms"], r["throughput_ips"]
    cells = [row_name(r) + (f" {FLAGGED}" if r.get("flags") else ""),
             r["model_file"] if full_paths else short_file(r["model_file"]), _ms(lat["p50"])]
    if p99:
        cells.append(_ms(lat["p99"]))
    speed = "" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
    drop = "" if r.get("top1_drop") is None else f"{r['top1_drop'] * 100:.1f}"
    return cells + [f"{ips:.1f}" if ips < 1000 else f"{ips:.0f}", speed, fmt(r.get("top1"), ".4f"), drop]


def _table(result: dict[str, Any], layout: str):
    """One candidate layout: "full" (bench.md's columns), "compact" (one label cell, latency p50/p99),
    "short" (compact with short file names), "narrow" (short, without p99)."""
    from rich import box
    from rich.table import Table

    devices = ", ".join(sorted({r["device"] for r in result["rows"]}))
    full = layout == "full"
    columns = COLUMNS if full else tuple(c for c in COMPACT_COLUMNS if layout != "narrow" or c != "p99 ms")
    table = Table(title=f"edgetl bench ({devices})", box=box.HEAVY_HEAD if full else box.SIMPLE_HEAD,
                  pad_edge=full, collapse_padding=not full)
    rows = [row_cells(r) if full else _compact_cells(r, full_paths=layout == "compact", p99=layout != "narrow")
            for r in result["rows"]]
    for i, col in enumerate(columns):
        # No cell wraps: a table that does not fit is replaced by a narrower layout (bench_table). Below the
        # narrowest, rich cuts cells with an ellipsis, never the row label.
        label = not full and i == 0
        table.add_column(col, justify="left" if col in _TEXT else "right", no_wrap=True, overflow="ellipsis",
                         min_width=max(len(c[0]) for c in rows) if label else None)
    for r, cells in zip(result["rows"], rows):
        table.add_row(*cells, style=_style(r))
    return table


LAYOUTS = ("full", "compact", "short", "narrow")


def bench_table(result: dict[str, Any], console=None):
    """The terminal table: the widest layout whose cells all fit the console's width unwrapped (rich reads the
    width from the terminal, else from COLUMNS, else 80). Returns (table, layout)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console(width=200)
    for layout in LAYOUTS:
        table = _table(result, layout)
        natural = Measurement.get(console, console.options.update_width(100_000), table).maximum  # unwrapped
        if natural <= console.width:
            return table, layout
    return table, layout  # narrower than every layout: rich shortens cells with an ellipsis


def _terminal_caption(result: dict[str, Any], layout: str) -> list[str]:
    """What the table's numbers mean, in short lines (bench.md says it all in full)."""
    s, ref = result["settings"], result.get("reference") or {}
    runs = f"{s['iterations']} iterations" if s.get("iterations") else f"{s['duration_s']} s"
    source = str(ref.get("source", "n/a")).split(" (")[0]
    lines = [f"latency: ms per call (one batch), {runs} per row after {s['warmup']} warm-up",
             "speed-up: base p50 / row p50 (base: torch fp32 at the same batch and device, else the backend's fp32)",
             f"drop: points below the reference top-1 {fmt(ref.get('top1'), '.4f')} ({source})"]
    if layout != "full":
        backends = {r["backend"] for r in result["rows"]}
        legend = [", ".join(f"{short} = {b}" for b, short in _SHORT.items() if b in backends)]
        if layout != "compact":
            legend.append("file: model.<file> in the run" + (", engines in engines/<gpu>-trt<version>/"
                                                              if "tensorrt" in backends else ""))
        if any(r.get("flags") for r in result["rows"]):
            legend.append(f"{FLAGGED} = flagged, see below")
        lines.append("; ".join(filter(None, legend + ["every column: bench.md"])))
    tests = drop_tests_line(result)
    return lines + ([tests] if tests else []) + sorted({f"timed: {r['backend']}: {r['timed']}"
                                                        for r in result["rows"] if r.get("timed")})


def print_bench(result: Any, console=None) -> None:
    """The rich table, what its numbers mean, the flags, then one line per skipped combination and per note.
    `result`: a BenchResult or the bench.json dict."""
    from edgetl.presentation.console import console as default_console

    console = console or default_console
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    table, layout = bench_table(result, console)
    console.print(table)
    console.print(f"run: {result['run']}; data: {result['data']}", markup=False, soft_wrap=True)  # paths unbroken
    lines = [(line, None) for line in _terminal_caption(result, layout)]
    if layout != "full":
        lines += [(f"{row_name(r)}: {flag}", _style(r)) for r in result["rows"] for flag in r.get("flags") or []]
    lines += [(line, "yellow") for line in skipped_lines(result.get("skipped") or [])]
    lines += [(note, "yellow") for note in result.get("notes") or []]
    for line, style in lines:  # wrapped at spaces to the console's width, not cut inside a word
        console.print(line, markup=False, style=style)


render_bench = print_bench
