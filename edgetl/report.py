"""The bench's tables (rich on the terminal, Markdown in bench.md) and its accuracy-vs-latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = ("backend", "precision", "batch", "device", "model file", "mean ms", "p50 ms", "p90 ms", "p99 ms",
           "img/s", "speed-up", "top-1", "drop (pts)", "flags")


def _fmt(value: Any, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def row_cells(r: dict[str, Any]) -> list[str]:
    lat = r["latency_ms"]
    speed = "" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
    drop = "" if r.get("top1_drop") is None else f"{r['top1_drop'] * 100:.1f}"
    return [r["backend"], r["precision"], str(r["batch_size"]), r["device"], r["model_file"],
            f"{lat['mean']:.3f}", f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}",
            f"{r['throughput_ips']:.1f}", speed, _fmt(r.get("top1"), ".4f"), drop, "; ".join(r.get("flags") or [])]


def _caption(result: dict[str, Any]) -> list[str]:
    s, ref = result["settings"], result.get("reference") or {}
    runs = f"{s['iterations']} iterations" if s.get("iterations") else f"{s['duration_s']} s"
    timed = sorted({f"{r['backend']}: {r['timed']}" for r in result["rows"] if r.get("timed")})
    lines = [f"run: {result['run']}; data: {result['data']}",
             f"warm-up {s['warmup']}, then {runs} per row; latency in ms per batch, perf_counter around infer() + "
             "synchronize()",
             f"speed-up: p50 of the base (column speedup_vs in bench.json: torch fp32 at the same batch and device, "
             f"else the backend's own fp32) / p50 of the row; drop: reference top-1 minus the row's "
             f"(reference {_fmt(ref.get('top1'), '.4f')}: {ref.get('source', 'n/a')})"]
    lines += [f"timed: {t}" for t in timed]
    return lines


_TEXT = ("backend", "precision", "device", "model file", "flags", "row")
COMPACT_COLUMNS = ("row", "model file", "p50", "p99", "img/s", "speed", "top-1", "drop")
WIDE_ENOUGH = 150  # terminal columns the full table needs; narrower terminals get the compact one
_SHORT = {"onnxruntime": "ort", "tensorrt": "trt"}


def _style(r: dict[str, Any]) -> str | None:
    flags = r.get("flags") or []
    return "red" if any("below the reference" in f for f in flags) else ("yellow" if flags else None)


def bench_table(result: dict[str, Any], width: int = 200):
    """The terminal table: bench.md's columns, or on a narrow terminal a compact one (backend, precision and
    batch in one cell, latency in ms; mean/p90 and flags are in bench.md and the lines under the table)."""
    from rich import box
    from rich.table import Table

    compact = width < WIDE_ENOUGH
    devices = ", ".join(sorted({r["device"] for r in result["rows"]}))
    table = Table(title=f"edgetl bench ({devices})", box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD)
    for col in COMPACT_COLUMNS if compact else COLUMNS:
        table.add_column(col, justify="left" if col in _TEXT else "right", overflow="fold",
                         no_wrap=col not in ("model file", "flags"), min_width=10 if col == "model file" else None)
    for r in result["rows"]:
        cells = row_cells(r)
        if compact:
            b, p, bs, _dev, f, _mean, p50, _p90, p99, ips, speed, top1, drop, _flags = cells
            cells = [f"{_SHORT.get(b, b)} {p} bs{bs}", f, p50, p99, ips, speed, top1, drop]
        table.add_row(*cells, style=_style(r))
    return table


def print_bench(result: dict[str, Any], console=None) -> None:
    """The rich table, what was timed, the flags, then one line per skipped combination and per note."""
    from edgetl.bench import skipped_lines
    from edgetl.console import console as default_console

    console = console or default_console
    console.print(bench_table(result, console.width))
    lines = [(line, None) for line in _caption(result)]
    if console.width < WIDE_ENOUGH:
        lines += [(f"{r['backend']} {r['precision']} bs{r['batch_size']}: {flag}", _style(r))
                  for r in result["rows"] for flag in r.get("flags") or []]
    lines += [(line, "yellow") for line in skipped_lines(result.get("skipped") or [])]
    lines += [(note, "yellow") for note in result.get("notes") or []]
    for line, style in lines:
        console.print(line, markup=False, style=style, soft_wrap=True)


def bench_markdown(result: dict[str, Any]) -> str:
    sysinfo = result.get("system") or {}
    libs = ", ".join(f"{k} {v}" for k, v in (sysinfo.get("libraries") or {}).items())
    machine = f"{sysinfo.get('cpu', '?')} ({sysinfo.get('cpu_count', '?')} cores)"
    if sysinfo.get("gpu"):
        machine += f", {sysinfo['gpu']}" + (f" (driver {sysinfo['driver']})" if sysinfo.get("driver") else "")
    if sysinfo.get("l4t_release"):
        machine += f", L4T {sysinfo['l4t_release']}, power mode {sysinfo.get('power_mode') or 'n/a'}"
    out = [f"# edgetl bench: `{result['run']}`", "", f"{result['created']} on {machine}", "", f"Libraries: {libs}", ""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join("---" if c in ("backend", "precision", "device", "model file", "flags") else "---:"
                              for c in COLUMNS) + "|")
    for r in result["rows"]:
        out.append("| " + " | ".join(c.replace("|", "\\|") if c else "" for c in row_cells(r)) + " |")
    out.append("")
    out += [f"- {line}" for line in _caption(result)]
    from edgetl.bench import skipped_lines

    out += [f"- {line}" for line in skipped_lines(result.get("skipped") or [])]
    out += [f"- {n}" for n in result.get("notes") or []]
    return "\n".join(out) + "\n"


def plot_bench(result: dict[str, Any], path: str | Path) -> None:
    """Top-1 against p50 latency, one labelled point per row (batch size in the label)."""
    from edgetl.io import atomic_path
    from edgetl.plots import pyplot_agg

    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    scored = [r for r in result["rows"] if r.get("top1") is not None]
    markers = {"torch": "o", "onnxruntime": "s", "tensorrt": "^"}
    for r in scored:
        per_image = r["latency_ms"]["p50"]
        ax.scatter(per_image, r["top1"], marker=markers.get(r["backend"], "x"), s=60)
        ax.annotate(f"{r['backend']} {r['precision']} bs{r['batch_size']}", (per_image, r["top1"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ref = (result.get("reference") or {}).get("top1")
    if ref is not None:
        ax.axhline(ref, color="grey", linestyle="--", linewidth=1, label=f"reference top-1 {ref:.3f}")
        ax.legend(loc="lower right")
    if not scored:
        ax.text(0.5, 0.5, "no row has a top-1 (see bench.md)", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="p50 latency per batch (ms)", ylabel="top-1", title="accuracy vs latency (one point per row)")
    if scored and max(r["latency_ms"]["p50"] for r in scored) / max(1e-9, min(r["latency_ms"]["p50"] for r in scored)) > 20:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
