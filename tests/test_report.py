"""The bench's picture and terminal table as a reader meets them: real rows from a tiny trained run, and a fake
3-backend x 3-precision x 3-batch set (fake rows are enough for a layout): no two drawn labels overlap, nothing
is cut off, and the table fits 100 (and 80) columns with every row on one line."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from edgetl.plots import BACKEND_MARKERS, PRECISION_COLOURS, bench_figure, plot_bench
from edgetl.presentation.bench import bench_table, print_bench, row_name, short_file


def fake_result(same_top1: bool = False) -> dict:
    """3 backends x 3 precisions x batch 1, 8, 32 on a device: 0.5 ms engines next to 30 ms eager PyTorch; with
    small int8/fp16 drops and one collapsed int8 engine unless same_top1."""
    base = {"torch": 30.0, "onnxruntime": 4.0, "tensorrt": 1.0}
    cost = {"fp32": 1.0, "fp16": 0.55, "int8": 0.5}
    drop = {"fp32": 0.0, "fp16": 0.001, "int8": 0.012}
    files = {"torch": "model.safetensors", "onnxruntime": "model.{p}.onnx",
             "tensorrt": "engines/orin-nano-8gb-trt10.3/model.{p}.plan"}
    rows = []
    for b, p, bs in itertools.product(base, cost, (1, 8, 32)):
        p50 = base[b] * cost[p] * (1 + 0.35 * (bs - 1))
        lost = 0.0 if same_top1 else drop[p] + (0.6 if (b, p) == ("tensorrt", "int8") else 0.0)
        rows.append({"backend": b, "precision": p, "batch_size": bs, "device": "cuda",
                     "model_file": files[b].format(p=p).replace("model.fp32.onnx", "model.onnx"),
                     "latency_ms": {"mean": p50 * 1.02, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3,
                                    "min": p50 * 0.9, "max": p50 * 1.5, "std": p50 * 0.05},
                     "throughput_ips": round(bs * 1000 / (p50 * 1.02), 2), "timed": "host->GPU + enqueue + GPU->host",
                     "top1": round(0.9125 - lost, 6), "n_images": 400, "top1_drop": round(lost, 6),
                     "speedup": round(30.0 / (base[b] * cost[p]), 3), "speedup_vs": "torch fp32",
                     "flags": [f"top-1 {lost * 100:.1f} pts below the reference"] if lost > 0.02 else []})
    return {"run": "runs/pets", "data": "splits.json (the run's validation split)", "created": "2026-11-21T18:00:00",
            "settings": {"iterations": 100, "warmup": 10, "duration_s": None},
            "reference": {"top1": 0.9125, "source": "torch fp32 row"}, "rows": rows, "skipped": [], "notes": [],
            "system": {"cpu": "ARMv8", "cpu_count": 6}}


@pytest.fixture(scope="module")
def real(exported_copy) -> tuple[dict, object]:
    """A real bench on the tiny trained run: torch fp32, onnxruntime fp32 and fp16, batch 1 and 4, files written."""
    from edgetl.bench import BenchSettings, bench
    from edgetl.quantize import QuantizeSettings, quantize

    run = exported_copy("report")
    quantize(run, QuantizeSettings(precision="fp16"))
    result = bench(run, BenchSettings(backends="torch,onnxruntime", batch_sizes="1,4", warmup=1,
                                      iterations=5)).model_dump(mode="json")
    return result, run


@pytest.fixture
def drawn(monkeypatch) -> list:
    """{Text: (text, window extent)} for every Text the renderer actually draws from here on (the last draw of
    each: saving may draw a figure more than once)."""
    from matplotlib.text import Text

    seen, original = {}, Text.draw

    def draw(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            seen[self] = (self.get_text(), self.get_window_extent(renderer))

    monkeypatch.setattr(Text, "draw", draw)
    return seen


def assert_readable(drawn: dict, png) -> None:
    """No two drawn labels overlap and none sticks out of the image."""
    drawn = list(drawn.values())
    width, height = Image.open(png).size
    assert len(drawn) > 10
    for text, box in drawn:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, f"{text!r} is cut off"
    for (t1, b1), (t2, b2) in itertools.combinations(drawn, 2):
        assert not b1.overlaps(b2), f"{t1!r} overlaps {t2!r}"


def save(result: dict, path) -> object:
    fig = bench_figure(result)
    fig.savefig(path, dpi=120)
    return fig


def assert_table_fits(result: dict, width: int) -> str:
    """Render as on a pipe (no terminal) `width` columns wide: no line over it, every row on exactly one line."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    print_bench(result, console)
    out = buf.getvalue()
    # every line fits, but the one naming the run and data: a path is printed whole, for copying
    assert max(len(line) for line in out.splitlines() if not line.startswith("run: ")) <= width
    table_lines = [line for line in out.splitlines() if " bs" in line and not line.startswith(("trt", "ort", "torch"))]
    assert len(table_lines) == len(result["rows"])  # no row spilled onto a second line
    for r, line in zip(result["rows"], table_lines):
        assert line.lstrip().startswith(row_name(r)) and f"{r['top1']:.4f}" in line
    return out


def test_real_bench_png_is_readable(real, drawn):
    result, run = real
    plot_bench(result, run / "bench.png")  # what bench() wrote, drawn again under the recorder
    assert_readable(drawn, run / "bench.png")
    texts = [t for t, _ in drawn.values()]
    assert {"batch 1", "batch 4"} <= set(texts)  # one panel per batch size
    tops = {r["top1"] for r in result["rows"]} | {result["reference"]["top1"]}
    if len(tops) == 1:  # the usual case here: fp16 and ONNX score what PyTorch scores
        (top1,) = tops
        assert any(f"every row scored top-1 {top1:.1%}" in t for t in texts)
        for r in result["rows"]:  # each point's p50, three significant figures, written beside it
            p50 = r["latency_ms"]["p50"]
            assert (f"{p50:.3g} ms" if p50 < 1000 else f"{p50:.0f} ms") in texts
    else:
        assert "onnxruntime fp16" in texts and "top-1 (%)" in texts


def test_real_table_fits_100_and_80_columns(real):
    result, _run = real
    out = assert_table_fits(result, 100)
    assert "model.safetensors" in out and "model.fp16.onnx" in out  # 100 columns keep the full file names
    out = assert_table_fits(result, 80)
    assert "ort = onnxruntime" in out


def test_fake_3x3x3_with_drops_is_readable(drawn, tmp_path):
    result = fake_result()
    fig = save(result, tmp_path / "bench.png")
    assert_readable(drawn, tmp_path / "bench.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["batch 1", "batch 8", "batch 32"]
    assert all(ax.get_xscale() == "log" for ax in panels)
    # latency axes span the data with labelled ticks inside: 0.5 ms and 30 ms on the batch-1 panel
    lo, hi = panels[0].get_xlim()
    assert lo < 0.5 and hi > 30 and len([t for t, _ in drawn.values() if t in ("0.5", "1", "2", "5", "10", "20")]) >= 4
    (legend,) = fig.legends
    entries = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles) if t.get_text().strip()}
    assert len(entries) == 10 and "reference" in entries  # 9 backend x precision + the reference line
    trt_int8 = entries["tensorrt int8"]
    assert trt_int8.get_marker() == BACKEND_MARKERS["tensorrt"] and trt_int8.get_color() == PRECISION_COLOURS["int8"]
    # the collapsed engine is drawn where it scored, inside the accuracy axis
    ylo, yhi = panels[0].get_ylim()
    collapsed = min(r["top1"] for r in result["rows"]) * 100
    assert ylo < collapsed < result["reference"]["top1"] * 100 < yhi


def test_fake_3x3x3_same_top1_says_so(drawn, tmp_path):
    result = fake_result(same_top1=True)
    fig = save(result, tmp_path / "bench.png")
    assert_readable(drawn, tmp_path / "bench.png")
    texts = [t for t, _ in drawn.values()]
    assert any("every row scored top-1 91.2% on 400 images: no drop against torch fp32 row" in t for t in texts)
    assert not fig.legends and "top-1 (%)" not in texts  # no axis spent on a flat line
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == [f"{b} {p}" for b in ("torch", "onnxruntime", "tensorrt") for p in ("fp32", "fp16", "int8")]
    assert "0.5 ms" in texts and "30 ms" in texts and "356 ms" in texts  # each point's p50, written beside it


def test_unscored_rows_still_show_latency(drawn, tmp_path):
    result = fake_result(same_top1=True)
    for r in result["rows"]:
        r["top1"] = r["top1_drop"] = None
    result["reference"] = {"top1": None, "source": "none: no fp32 model scored on these images"}
    save(result, tmp_path / "bench.png")
    assert_readable(drawn, tmp_path / "bench.png")
    texts = [t for t, _ in drawn.values()]
    assert any("top-1 not measured" in t for t in texts) and "0.5 ms" in texts


def test_fake_table_fits_100_columns(tmp_path):
    result = fake_result()
    out = assert_table_fits(result, 100)
    assert "trt int8 bs32 !" in out and "trt int8 bs32: top-1 61.2 pts below the reference" in out
    assert "ort = onnxruntime, trt = tensorrt" in out and "int8.plan" in out and "orin-nano" not in out
    assert_table_fits(result, 80)
    # bench.md keeps the full table: every column, full paths
    from edgetl.bench.markdown import COLUMNS, bench_markdown

    md = bench_markdown(result)
    assert "| " + " | ".join(COLUMNS) + " |" in md and "engines/orin-nano-8gb-trt10.3/model.int8.plan" in md


def test_wide_terminal_gets_every_column(real):
    from rich.console import Console

    result, _run = real
    table, layout = bench_table(result, Console(file=io.StringIO(), width=200))
    assert layout == "full" and len(table.columns) == 14


def test_columns_env_is_respected(real, tmp_path):
    """The CLI's console takes its width from COLUMNS when stdout is a pipe."""
    result, _run = real
    (tmp_path / "r.json").write_text(json.dumps(result))
    code = ("import json, sys; from edgetl.presentation.bench import print_bench; "
            "print_bench(json.load(open(sys.argv[1])))")
    for columns, longest in (("100", 100), ("200", 200)):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.json")], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": columns}, check=True)
        # the run/data line is printed whole so its paths can be copied: its length is the tmp path's
        widths = [len(line) for line in proc.stdout.splitlines() if not line.startswith("run: ")]
        assert max(widths) <= longest
        assert ("mean ms" in proc.stdout) == (columns == "200")  # only the wide console gets the full table


def test_short_file_names():
    assert short_file("model.safetensors") == "safetensors"
    assert short_file("model.int8.cpu.onnx") == "int8.cpu.onnx"
    assert short_file("engines/orin-trt10.3/model.fp16.plan") == "fp16.plan"
    assert short_file("weights.onnx") == "weights.onnx"
