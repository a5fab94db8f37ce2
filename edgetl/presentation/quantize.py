"""`edgetl quantize`'s table: each model it wrote against fp32, then one line per note (parity, budget, layers
kept in float)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgetl.metrics import drop_verdict
from edgetl.presentation.console import console as default_console


def render_quantize(result: Any, console: Console | None = None) -> None:
    """Print a QuantizeResult (or its JSON dict): the table of its entries, the notes, the report's path."""
    console = console or default_console
    data = result if isinstance(result, dict) else result.model_dump(mode="json")
    entries = data.get("entries") or {}
    table = Table(title="quantized vs fp32 (onnxruntime, CPU)")
    for col in ("model", "fp32 top-1", "top-1", "drop pt", "method", "calib", "float layers"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right", no_wrap=col == "model")
    for e in entries.values():
        top1, drop = e.get("top1"), e.get("drop")
        cells = (e["model_file"], f"{e['fp32_top1'] * 100:.2f}", "n/a" if top1 is None else f"{top1 * 100:.2f}",
                 "n/a" if drop is None else f"{drop:+.2f}", e.get("method") or "-", str(e.get("calib_size") or "-"),
                 str(len(e.get("excluded") or [])))
        table.add_row(*(Text(c) for c in cells))  # Text: a node or file name in [brackets] is not markup
    console.print(table)
    for line in quant_notes(entries):
        console.print(line, markup=False, soft_wrap=True, highlight=False)
    if data.get("report"):
        console.print(f"report: {data['report']}", markup=False, soft_wrap=True, highlight=False)


def quant_notes(entries: dict[str, dict]) -> list[str]:
    """What the table cannot show: fp16 parity or why it was not scored, a missed budget, layers kept float."""
    notes = []
    for e in entries.values():
        name, drop = e["model_file"], e.get("drop")
        if e.get("cpu_note"):
            notes.append(f"{name}: {e['cpu_note']}")
        if e.get("parity"):
            p = e["parity"]
            notes.append(f"{name}: parity {'ok' if e.get('parity_ok') else 'FAILED'} (max |delta logit| "
                         f"{p['max_abs_logit_delta']:.3g} <= {p['tolerance']:.3g}, top-1 agreement "
                         f"{p['top1_agreement'] * 100:.1f}%)")
        if drop is not None and e.get("within_max_drop") is False:
            notes.append(f"{name}: drop {drop:.2f} pt is above max_drop {e['max_drop']}")
        for x in e.get("excluded") or []:
            notes.append(f"{name}: kept {x['node']} in float (+{x['gain']:.2f} pt)")
        notes.extend(f"{name}: {line}" for line in qat_notes(e.get("qat")))
        notes.extend(f"{name}: {line}" for line in paired_notes(e.get("paired"), drop))
    return notes


def qat_notes(qat: dict | None) -> list[str]:
    """PTQ and QAT side by side, which graph the file holds, and the classes QAT changed most."""
    if not qat:
        return []
    lines = [f"PTQ top-1 {qat['ptq_top1'] * 100:.2f}% (drop {qat['ptq_drop']:+.2f} pt) vs QAT "
             f"{qat['top1'] * 100:.2f}% (drop {qat['drop']:+.2f} pt) after {qat['epochs']} epoch(s), "
             f"{qat['minutes']:.1f} min ({qat['library']}); the file holds the "
             f"{'QAT' if qat['kept'] else 'PTQ'} graph"
             + (f"; the QAT weights in float score {qat['float_top1'] * 100:.2f}%" if qat.get("float_top1") is not None
                else "")]
    before, after = (qat.get("ptq_paired") or {}).get("per_class", {}), (qat.get("paired") or {}).get("per_class", {})
    changes = sorted(((k, (after[k]["model"] - v["model"]) * 100) for k, v in before.items() if k in after),
                     key=lambda t: -abs(t[1]))
    lines += [f"QAT moved class {k} {pt:+.1f} pt" for k, pt in changes[:3] if abs(pt) >= CLASS_LOSS_PT]
    return lines


CLASS_LOSS_PT = 10.0  # a class that lost this many points is named, however the overall drop reads


def paired_notes(paired: dict | None, drop: float | None) -> list[str]:
    """Whether the drop is distinguishable from 0 on these images (McNemar), and the classes that lost most."""
    if not paired or drop is None:
        return []
    b, c = paired["only_reference_right"], paired["only_model_right"]
    verdict = drop_verdict(paired["significant"], b, c)
    lines = [f"drop {drop:+.2f} pt on {paired['n']} images: {b} right only in fp32, {c} only here, McNemar "
             f"p={paired['p_value']:.2g} ({verdict})"]
    losses = sorted(((k, (v["reference"] - v["model"]) * 100, v["n"]) for k, v in paired["per_class"].items()),
                    key=lambda t: -t[1])
    lines += [f"class {k} lost {pt:.1f} pt ({n} images)" for k, pt, n in losses if pt >= CLASS_LOSS_PT]
    return lines
