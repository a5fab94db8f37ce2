"""The fleet's report: one table of device x precision x batch size (fleet.md, and the terminal's, from the same
cells) and one figure (fleet.png, matplotlib in the style of the bench figure of edgetl.plots)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgetl.io import atomic_path
from edgetl.plots import BACKEND_MARKERS, PRECISION_COLOURS, _log_axis, _ms, pyplot_agg

from edgetl.ship.fleet_result import FleetHost, FleetResult

_CLOCK_NAMES = (("gpu_mhz", "gpu"), ("cpu0_mhz", "cpu"), ("emc_mhz", "emc"))


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def clocks_text(clocks: dict[str, float] | None) -> str:
    """'gpu 1300 / cpu 2201 / emc 3199 MHz' from what the device could read; '' when none."""
    parts = [f"{short} {clocks[key]:g}" for key, short in _CLOCK_NAMES if clocks and clocks.get(key) is not None]
    return " / ".join(parts) + " MHz" if parts else ""


def table(result: FleetResult) -> tuple[list[str], list[list[str]]]:
    """(columns, cells): one line per measurement. Power mode and clocks appear where a device reported them."""
    hosts = {h.host: h for h in result.hosts}
    power = any(h.power_mode for h in result.hosts)
    clocks = any(clocks_text(h.clocks) for h in result.hosts)
    columns = ["device", "board", "backend", "precision", "batch", "runs on", "p50 ms", "p99 ms", "img/s", "top-1",
               "drop (pts)"] + (["power mode"] if power else []) + (["clocks"] if clocks else [])
    cells = []
    for r in result.rows:
        h = hosts[r.host]
        line = [r.host, h.board or "", r.backend, r.precision, str(r.batch_size), r.device,
                f"{r.latency_ms['p50']:.3f}", f"{r.latency_ms['p99']:.3f}", f"{r.throughput_ips:.1f}",
                _fmt(r.top1, ".4f"), "" if r.top1_drop is None else f"{r.top1_drop * 100:+.1f}"]
        cells.append(line + ([h.power_mode or ""] if power else []) + ([clocks_text(h.clocks)] if clocks else []))
    return columns, cells


def failure_line(host: str, error: str, hint: str | None = None) -> str:
    """'user@host: FAILED: why (hint: ...)', the device named once even when the message starts with it."""
    why = error[len(host) + 2:] if error.startswith(f"{host}: ") else error
    return f"{host}: FAILED: {why}" + (f" (hint: {hint})" if hint else "")


def outcome_lines(result: FleetResult) -> list[str]:
    """One line per device that failed (its reason) or deployed without a measurement."""
    measured = {r.host for r in result.rows}
    lines = []
    for h in result.hosts:
        if h.error is not None:
            lines.append(failure_line(h.host, h.error, h.hint))
        elif h.host not in measured:
            lines.append(f"{h.host}: deployed to {h.device_dir}, not benchmarked (bench off)")
    return lines


def summary(result: FleetResult) -> str:
    failed = len(result.failed)
    return (f"{len(result.hosts) - failed} of {len(result.hosts)} devices ok" + (f", {failed} failed" if failed else "")
            + f"; {result.backend} {result.precision}, bundle {result.bundle_sha256[:16]}, {result.jobs} at a time")


def fleet_markdown(result: FleetResult) -> str:
    columns, cells = table(result)
    numeric = {"batch", "p50 ms", "p99 ms", "img/s", "top-1", "drop (pts)"}
    out = [f"# edgetl fleet: `{result.run}`", "", f"{result.created}: {summary(result)}", ""]
    if cells:
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "|".join("---:" if c in numeric else "---" for c in columns) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
        out.append("")
    out += [f"- {line}" for line in outcome_lines(result)]
    out += ["", "Per device: `devices/<user@host>[_port]/` (bench.json, facts.json, deploy.json). "
            "Drop: fp32 PyTorch top-1 on the bundle's images minus the row's, in points."]
    return "\n".join(out) + "\n"


# -- the figure -------------------------------------------------------------------------------------------
def fleet_figure(result: FleetResult):
    """One panel per batch size: each device's p50 latency per call (log axis) with a line out to its p99,
    colour = precision, marker = backend, the p50 and top-1 written beside the point. Failed devices are
    named under the title."""
    plt = pyplot_agg()
    rows = result.rows
    batches = sorted({r.batch_size for r in rows}) or [None]
    labels = list(dict.fromkeys(f"{r.host} {r.precision}" if _multi(rows) else r.host for r in rows))
    ncols = min(3, len(batches))
    nrows = math.ceil(len(batches) / ncols)
    panel_h = max(2.4, 0.35 * len(labels) + 1.2)
    failed = result.failed
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(7.5, 4.2 * ncols + 1.6), panel_h * nrows + 1.1),
                             sharey=True, squeeze=False, layout="constrained")
    title = f"edgetl fleet ({result.backend} {result.precision}): p50 latency per call, line to p99"
    if failed:
        title += "\nfailed: " + _failed_text(failed)
    fig.suptitle(title, fontsize=10)
    ypos = {label: i for i, label in enumerate(labels)}
    for ax in axes.flat[len(batches):]:
        ax.set_visible(False)
    for ax, bs in zip(axes.flat, batches):
        mine = [r for r in rows if r.batch_size == bs]
        ax.grid(alpha=0.3, which="major")
        ax.tick_params(labelsize=8)
        if not mine:
            ax.text(0.5, 0.5, "no device measured (bench off, or every device failed)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_title(f"batch {bs}", fontsize=9)
        lo, hi = _log_axis(ax, [r.latency_ms["p50"] for r in mine] + [r.latency_ms["p99"] for r in mine])
        for r in mine:
            y = ypos[f"{r.host} {r.precision}" if _multi(rows) else r.host]
            p50, p99 = r.latency_ms["p50"], r.latency_ms["p99"]
            colour = PRECISION_COLOURS.get(r.precision, "#7f7f7f")
            ax.plot([p50, p99], [y, y], color=colour, linewidth=1.5, alpha=0.6, zorder=2)
            ax.scatter(p50, y, s=48, edgecolors="black", linewidths=0.5, zorder=3, color=colour,
                       marker=BACKEND_MARKERS.get(r.backend, "D"))
            right = math.log(p99 / lo) / math.log(hi / lo) < 0.6
            top1 = "" if r.top1 is None else f", top-1 {r.top1:.1%}"
            ax.annotate(f"{_ms(p50)} ms{top1}", (p99 if right else p50, y), xytext=(7 if right else -7, 0),
                        textcoords="offset points", ha="left" if right else "right", va="center", fontsize=7.5)
        ax.set_xlabel("ms per call (log)", fontsize=8)
    if rows:
        hosts = {h.host: h for h in result.hosts}
        names = []
        for label in labels:  # the device, then what it is (board, power mode) in a second line
            h = hosts[label.split(" ")[0]]
            what = ", ".join(x for x in (h.board, h.power_mode) if x)
            names.append(f"{label}\n{what}" if what else label)
        axes[0, 0].set_yticks(range(len(labels)), names, fontsize=8)
        axes[0, 0].set_ylim(len(labels) - 0.5, -0.5)
    return fig


def _multi(rows) -> bool:
    return len({r.precision for r in rows}) > 1


def _failed_text(failed: list[FleetHost], limit: int = 3) -> str:
    names = [h.host for h in failed]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def plot_fleet(result: FleetResult, path: str | Path) -> None:
    """Write fleet_figure(result) as a PNG, atomically."""
    fig = fleet_figure(result)
    plt = pyplot_agg()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


__all__ = ["clocks_text", "failure_line", "fleet_figure", "fleet_markdown", "outcome_lines", "plot_fleet", "summary", "table"]
