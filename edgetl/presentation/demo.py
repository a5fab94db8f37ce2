"""What `edgetl demo` prints as it goes: a rule per section, a line per epoch, the per-seed transfer table, the
bench table. The demo stage sends these as Events records; this module draws them."""

from __future__ import annotations

from typing import Any

from edgetl.presentation.console import console
from edgetl.presentation.finetune import print_epoch
from edgetl.presentation.events import RichEvents


def demo_events() -> RichEvents:
    """RichEvents that draw the demo's records."""
    return RichEvents(on_record={"section": print_section, "epoch": print_epoch, "transfer": print_transfer,
                                 "quantize_table": print_quantize_result, "bench_table": print_bench_result,
                                 "shift_table": print_shift_result})


def print_section(data: dict[str, Any]) -> None:
    console.rule(data["title"])


def print_transfer(data: dict[str, Any]) -> None:
    """Transfer vs from-scratch top-1 per seed, and the gain in points."""
    from rich.table import Table

    rows = data["rows"]
    table = Table(title=f"digits 5-9, {data['shots']} labelled image(s) per class, top-1 on {rows[0]['test']} test "
                        "images")
    for col in ("seed", f"from ImageNet ({data['strategy']})", "from scratch", "gain (points)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["seed"]), f"{r['transfer']:.3f}", f"{r['scratch']:.3f}", f"{r['gain'] * 100:+.1f}")
    console.print(table)


def print_bench_result(result: dict[str, Any]) -> None:
    from edgetl.presentation.bench import print_bench

    print_bench(result)


def print_quantize_result(data: dict[str, Any]) -> None:
    from edgetl.presentation.quantize import render_quantize

    render_quantize(data)


def print_shift_result(data: dict[str, Any]) -> None:
    from edgetl.presentation.shift import render_shift
    from edgetl.shift.run import ShiftResult

    render_shift(ShiftResult.model_validate(data))
