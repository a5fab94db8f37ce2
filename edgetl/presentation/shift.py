"""`edgetl shift`'s output: one table of the three answers with their verdicts, then the images to look at."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from edgetl.presentation.console import console as default_console

WORST_TENSORS = 5  # named on the terminal; all are in shift.json and the figure


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _share(x: float) -> str:
    return "0" if x == 0 else f"{x * 100:.3g}%"


def _p(p: float) -> str:
    return f"p={p:.2g}"


def render_shift(result: Any, console: Console | None = None) -> None:
    console = console or default_console
    f, c, a = result.features, result.coverage, result.accuracy
    kind = "labelled" if result.labelled else "unlabelled"
    console.print(f"{result.data}: {result.images} {kind} images against the run's val split ({result.val_images})",
                  markup=False, highlight=False)
    table = Table(title="domain shift")
    for name, justify in (("check", "left"), ("new", "right"), ("val", "right"), ("test", "right")):
        table.add_column(name, justify=justify)
    table.add_row("features: median distance", f"{f.median_score:.1f}", f"{f.val_median_score:.1f}",
                  _p(f.above_p))
    table.add_row(f"  above val's p{f.quantile:g}", _pct(f.above), _pct(f.above_expected), "")
    if f.mmd_p is not None:
        table.add_row("  MMD²", f"{f.mmd2:.4f}", "", _p(f.mmd_p))
    if c is not None:
        worst = c.tensors[0] if c.tensors else None
        table.add_row("int8: worst tensor outside", _share(worst.new) if worst else "-",
                      _share(worst.val) if worst else "-", "")
        table.add_row(f"  ranges not covered (/{len(c.tensors)})", str(c.uncovered),
                      str(c.val_uncovered) if c.reference == "calibration images" else "-", "")
        table.add_row("  int8 agrees with fp32", _pct(c.int8_agreement), _pct(c.val_int8_agreement), "")
    if a is not None:
        table.add_row("top-1 (fp32)", _pct(a.new_top1), _pct(a.val_top1), _p(a.p_value))
        if a.int8 is not None:
            d = a.int8
            drop = (d.only_reference_right - d.only_model_right) / d.n * 100
            table.add_row("  int8 drop", f"{drop:.2f} pt", "", _p(d.p_value))
    console.print(table)
    _details(result, console)


def _details(result: Any, console: Console) -> None:
    c, a = result.coverage, result.accuracy
    if a is not None and len(a.per_class) <= 30:
        console.print("per class (new / val): " + ", ".join(
            f"{name} {_pct(v.new)}/{'n/a' if v.val is None else _pct(v.val)}" for name, v in a.per_class.items()),
            markup=False)
    if c is not None and c.uncovered:
        console.print("ranges not covered: " + ", ".join(
            f"{t.tensor} {_share(t.new)}" for t in c.tensors[:WORST_TENSORS] if not t.covered), markup=False)
    if result.least_like_training:
        console.print("least like training: " + ", ".join(
            f"{r.path} ({r.score:.1f})" for r in result.least_like_training[:5]), markup=False)
    if result.most_saturating and result.most_saturating[0].outside > 0:
        console.print("most saturating: " + ", ".join(
            f"{r.path} ({_share(r.outside)})" for r in result.most_saturating[:5]), markup=False)
    console.print(f"tests: distance Mann-Whitney, MMD permutation, top-1 Fisher, int8 McNemar; coverage against "
                  f"the {c.reference}" if c is not None else "tests: distance Mann-Whitney, MMD permutation, top-1 "
                  "Fisher", markup=False, style="dim")
    for verdict in result.verdicts:
        console.print(f"- {verdict}", markup=False)
    if c is not None and c.command:
        console.print(f"  re-calibrate: {c.command}", markup=False)
    console.print(f"wrote {result.json_path}, {result.png_path}", markup=False)
