"""Figures (matplotlib, headless): training curves, the confusion matrix, and the bench's accuracy vs latency."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgetl.io import atomic_path


def pyplot_agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot_agg()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["train_top1"] for r in rows], marker="o", label="train")
    ax_acc.plot(epochs, [r["val_top1"] for r in rows], marker="o", label="val")
    ax_acc.set(xlabel="epoch", ylabel="top-1", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        # A phase change (lp-ft: probe -> finetune) is a dotted line between the two epochs, named along it.
        for prev, row in zip(rows, rows[1:]):
            if row.get("phase") != prev.get("phase"):
                ax.axvline(row["epoch"] - 0.5, color="grey", linestyle=":")
                ax.text(row["epoch"] - 0.5, 0.5, f"{prev['phase']} | {row['phase']}", transform=ax.get_xaxis_transform(),
                        ha="center", va="center", fontsize=8, color="grey", rotation=90,
                        backgroundcolor="white")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    plt = pyplot_agg()
    n = len(classes)
    size = min(12, 2 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="confusion (val)")
    ax.set_xticklabels(classes, rotation=90)
    ax.set_yticklabels(classes)
    if n <= 20:
        peak = max(max(r) for r in confusion) or 1
        for i, row in enumerate(confusion):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    plt = pyplot_agg()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# -- the bench figure: how fast, at what accuracy --------------------------------------------------------------
# One panel per batch size: a row's latency is per call, so batch 8 is compared with batch 8 only (a bs8 point
# right of a bs1 point would say nothing about speed). Latency is on a log axis: 0.5 ms engines and 30 ms eager
# PyTorch sit on one plot with the fast points still apart. Colour = precision, marker = backend.
PRECISION_COLOURS = {"fp32": "#1f77b4", "bf16": "#9467bd", "fp16": "#ff7f0e", "int8": "#2ca02c"}
BACKEND_MARKERS = {"torch": "o", "onnxruntime": "s", "tensorrt": "^"}
_BACKEND_ORDER = ("torch", "onnxruntime", "tensorrt")
_PRECISION_ORDER = ("fp32", "bf16", "fp16", "int8")
_SAME_TOP1 = 1e-6  # top-1 values closer than this are the same score


def _order(name: str, known: tuple[str, ...]) -> tuple[int, str]:
    return (known.index(name) if name in known else len(known), name)


def _combo(r: dict[str, Any]) -> tuple[str, str]:
    return r["backend"], r["precision"]


def _combo_key(combo: tuple[str, str]) -> tuple:
    return _order(combo[0], _BACKEND_ORDER), _order(combo[1], _PRECISION_ORDER)


def _style(combo: tuple[str, str]) -> dict[str, Any]:
    return {"marker": BACKEND_MARKERS.get(combo[0], "D"), "color": PRECISION_COLOURS.get(combo[1], "#7f7f7f")}


def _ms(value: float) -> str:
    """Latency with three significant figures at any scale: 0.412, 8.52, 30.1, 412."""
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _log_limits(values: list[float]) -> tuple[float, float]:
    """Log-axis limits around the values, at least a factor 3 wide so that labelled ticks fall inside."""
    lo, hi = min(values), max(values)
    pad = max(1.3, math.sqrt(3 * lo / hi))
    return lo / pad, hi * pad


def _log_axis(ax, values: list[float]) -> tuple[float, float]:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = _log_limits(values)
    decades = math.log10(hi / lo)
    subs = ((1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0) if decades <= 0.6 else (1.0, 2.0, 3.0, 5.0) if decades <= 1.2
            else (1.0, 2.0, 5.0) if decades <= 2.2 else (1.0,))
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs="auto"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    return lo, hi


def _accuracy_line(result: dict[str, Any], scored: list[dict[str, Any]]) -> tuple[bool, str]:
    """(same, sentence): whether every row scored the same top-1 (then the figure spends no axis on accuracy),
    and what the figure says about accuracy."""
    ref = result.get("reference") or {}
    ref_top1, source = ref.get("top1"), str(ref.get("source") or "reference").split(" (")[0]
    if not scored:
        return True, "top-1 not measured on these images (see bench.md): latency only"
    tops = [r["top1"] for r in scored] + ([ref_top1] if ref_top1 is not None else [])
    n = max(r.get("n_images") or 0 for r in scored)
    unscored = len(result["rows"]) - len(scored)
    if max(tops) - min(tops) <= _SAME_TOP1:
        against = f": no drop against {source}" if ref_top1 is not None else ""
        rest = f"; {unscored} row(s) unscored" if unscored else ""
        return True, f"every row scored top-1 {tops[0]:.1%} on {n} images{against}{rest}"
    ref_text = f"; dashed line: {source} {ref_top1:.1%}" if ref_top1 is not None else ""
    rest = f"; {unscored} unscored row(s) not drawn" if unscored else ""
    return False, f"top-1 on {n} images{ref_text}{rest}"


def bench_figure(result: dict[str, Any]):
    """The bench's picture (a matplotlib Figure): one panel per batch size, p50 latency per call on a log axis.

    When rows differ in top-1: top-1 against latency, colour = precision, marker = backend, a legend
    under the panels.
    When every row scored the same (the usual fp32/fp16 case) or none was scored: one line per backend x
    precision with its latency written next to the point, and the accuracy said in the title instead.
    """
    plt = pyplot_agg()
    rows = result["rows"]
    scored = [r for r in rows if r.get("top1") is not None]
    same, accuracy = _accuracy_line(result, scored)
    batches = sorted({r["batch_size"] for r in rows})
    combos = sorted({_combo(r) for r in rows}, key=_combo_key)
    ncols = min(3, len(batches))
    nrows = math.ceil(len(batches) / ncols)
    panel_h = max(2.6, 0.32 * len(combos) + 1.2) if same else 3.4
    legend_h = 0 if same else 0.2 * len({p for _, p in combos}) + 0.2
    # at least 7.5 in wide, so that the two title lines fit above a single panel
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(7.5, 3.7 * ncols + (1.6 if same else 0.5)),
                                                    panel_h * nrows + 0.9 + legend_h),
                             sharey=True, squeeze=False, layout="constrained")
    devices = ", ".join(sorted({r["device"] for r in rows}))
    fig.suptitle(f"edgetl bench ({devices}): p50 latency per call, one panel per batch size\n{accuracy}",
                 fontsize=10)
    ypos = {c: i for i, c in enumerate(combos)}
    for ax in axes.flat[len(batches):]:
        ax.set_visible(False)
    for ax, bs in zip(axes.flat, batches):
        mine = [r for r in (rows if same else scored) if r["batch_size"] == bs]
        ax.set_title(f"batch {bs}", fontsize=9)
        ax.grid(alpha=0.3, which="major")
        ax.tick_params(labelsize=8)
        if not mine:
            ax.text(0.5, 0.5, "no scored row", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
            continue
        p50 = [r["latency_ms"]["p50"] for r in mine]
        lo, hi = _log_axis(ax, p50)
        for r, x in zip(mine, p50):
            y = ypos[_combo(r)] if same else r["top1"] * 100
            ax.scatter(x, y, s=48, edgecolors="black", linewidths=0.5, alpha=0.9, zorder=3, **_style(_combo(r)))
            if same:  # one point per line: its value fits beside it, on the side with room
                right = math.log(x / lo) / math.log(hi / lo) < 0.7
                ax.annotate(f"{_ms(x)} ms", (x, y), xytext=(7 if right else -7, 0), textcoords="offset points",
                            ha="left" if right else "right", va="center", fontsize=7.5)
        ax.set_xlabel("p50 ms per call (log)", fontsize=8)
    if same:
        axes[0, 0].set_yticks(range(len(combos)), [f"{b} {p}" for b, p in combos])
        axes[0, 0].set_ylim(len(combos) - 0.5, -0.5)
    else:
        _accuracy_axis(fig, axes, scored, (result.get("reference") or {}).get("top1"))
    return fig


def _accuracy_axis(fig, axes, scored: list[dict[str, Any]], ref_top1: float | None) -> None:
    """Top-1 (%) on the shared y axis, the reference as a dashed line, the legend."""
    from matplotlib.lines import Line2D

    tops = [r["top1"] * 100 for r in scored] + ([ref_top1 * 100] if ref_top1 is not None else [])
    lo, hi = min(tops), max(tops)
    pad = max(0.5, 0.08 * (hi - lo))
    for ax in axes.flat:
        if ref_top1 is not None and ax.get_visible():
            ax.axhline(ref_top1 * 100, color="grey", linestyle="--", linewidth=1, zorder=1)
    axes[0, 0].set_ylim(lo - pad, hi + pad)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 (%)", fontsize=8)
    # One legend column per backend, one line per precision (blank cells pad the columns), the reference last;
    # under the panels, not beside them, where it would share the top of the figure with the title.
    shown = sorted({_combo(r) for r in scored}, key=_combo_key)
    backends = list(dict.fromkeys(b for b, _ in shown))
    depth = max(sum(1 for b, _ in shown if b == backend) for backend in backends)
    blank = Line2D([], [], linestyle="none", label=" ")
    handles = []
    for backend in backends:
        column = [Line2D([], [], linestyle="none", markersize=7, markeredgecolor="black", markeredgewidth=0.5,
                         label=f"{b} {p}", **_style((b, p))) for b, p in shown if b == backend]
        handles += column + [blank] * (depth - len(column))
    if ref_top1 is not None:
        handles += [Line2D([], [], color="grey", linestyle="--", linewidth=1, label="reference")]
        handles += [blank] * (depth - 1)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles) // depth, fontsize=8, frameon=False)


def plot_bench(result: dict[str, Any], path: str | Path) -> None:
    """Write bench_figure(result) as a PNG, atomically."""
    fig = bench_figure(result)
    plt = pyplot_agg()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


# -- the shift figure: new images against val, in feature space and in the int8 ranges ------------------------
SHIFT_TENSORS = 30  # the worst tensors drawn; all are in shift.json


def plot_shift(result: Any, scores: Any, val_scores: Any, path: Path) -> None:
    """Left: the Mahalanobis score of the new images and of val, with val's threshold. Right (with an int8
    graph): per quantized tensor, worst first, the share of values outside its int8 range, new and val."""
    import numpy as np

    plt = pyplot_agg()
    coverage = result.coverage
    fig, axes = plt.subplots(1, 2 if coverage else 1, figsize=(12 if coverage else 6, 4), squeeze=False)
    ax = axes[0][0]
    bins = np.histogram_bin_edges(np.concatenate([scores, val_scores]), bins=30)
    ax.hist(val_scores, bins=bins, density=True, alpha=0.5, label=f"val ({len(val_scores)})")
    ax.hist(scores, bins=bins, density=True, alpha=0.5, label=f"new ({len(scores)})")
    f = result.features
    ax.axvline(f.threshold, color="black", linestyle="--", label=f"val p{f.quantile:g}")
    ax.set(xlabel="Mahalanobis distance to the nearest class mean", ylabel="density",
           title=f"features: {f.verdict} ({'MMD' if f.mmd_p is not None else 'rank test'} "
                 f"p={f.mmd_p if f.mmd_p is not None else f.above_p:.3g})")
    ax.legend()
    if coverage:
        rows = coverage.tensors[:SHIFT_TENSORS]
        ax = axes[0][1]
        x = np.arange(len(rows))
        floor = 1e-7  # zero on a log axis
        ax.bar(x - 0.2, [max(r.val, floor) for r in rows], 0.4, label="val")
        ax.bar(x + 0.2, [max(r.new, floor) for r in rows], 0.4, label="new",
               color=["#d62728" if not r.covered else "#ff7f0e" for r in rows])
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set(xlabel=f"quantized tensor (worst {len(rows)} of {len(coverage.tensors)})",
               ylabel="share of values outside the int8 range", title=f"int8 coverage: {coverage.verdict.split(':')[0]}")
        ax.set_xticks(x, [str(i + 1) for i in x], fontsize=6)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
