"""bench.md: the full bench table (every column, full paths) and what its numbers mean, as plain Markdown."""

from __future__ import annotations

from typing import Any

from edgetl.bench.plan import skipped_lines
from edgetl.metrics import drop_verdict

COLUMNS = ("backend", "precision", "batch", "device", "model file", "mean ms", "p50 ms", "p90 ms", "p99 ms",
           "img/s", "speed-up", "top-1", "drop (pts)", "flags")


def fmt(value: Any, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def row_cells(r: dict[str, Any]) -> list[str]:
    lat = r["latency_ms"]
    speed = "" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
    drop = "" if r.get("top1_drop") is None else f"{r['top1_drop'] * 100:.1f}"
    return [r["backend"], r["precision"], str(r["batch_size"]), r["device"], r["model_file"],
            f"{lat['mean']:.3f}", f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}",
            f"{r['throughput_ips']:.1f}", speed, fmt(r.get("top1"), ".4f"), drop, "; ".join(r.get("flags") or [])]


def caption(result: dict[str, Any]) -> list[str]:
    s, ref = result["settings"], result.get("reference") or {}
    runs = f"{s['iterations']} iterations" if s.get("iterations") else f"{s['duration_s']} s"
    timed = sorted({f"{r['backend']}: {r['timed']}" for r in result["rows"] if r.get("timed")})
    lines = [f"run: {result['run']}; data: {result['data']}",
             f"warm-up {s['warmup']}, then {runs} per row; latency in ms per batch, perf_counter around infer() + "
             "synchronize()",
             f"speed-up: p50 of the base (column speedup_vs in bench.json: torch fp32 at the same batch and device, "
             f"else the backend's own fp32) / p50 of the row; drop: reference top-1 minus the row's "
             f"(reference {fmt(ref.get('top1'), '.4f')}: {ref.get('source', 'n/a')})"]
    lines += [f"timed: {t}" for t in timed]
    tests = drop_tests_line(result)
    return lines + ([tests] if tests else [])


def drop_tests_line(result: dict[str, Any]) -> str | None:
    """Each scored row's drop judged image by image against the reference (McNemar's exact test): a drop on a
    few hundred images is often "not distinguishable from 0"."""
    tests = result.get("drop_tests") or {}
    said = []
    for label, t in tests.items():
        if t["only_reference_right"] == t["only_model_right"] == 0:
            continue  # the same images right: nothing to test
        verdict = drop_verdict(t["significant"], t["only_reference_right"], t["only_model_right"])
        said.append(f"{label} p={t['p_value']:.2g} ({t['only_reference_right']} images only the reference got "
                    f"right, {t['only_model_right']} only this one: {verdict})")
    return ("drop, image by image against the reference (McNemar): " + "; ".join(said)) if said else None


def bench_markdown(result: dict[str, Any]) -> str:
    sysinfo = result.get("system") or {}
    libs = ", ".join(f"{k} {v}" for k, v in (sysinfo.get("libraries") or {}).items())
    machine = f"{sysinfo.get('cpu', '?')} ({sysinfo.get('cpu_count', '?')} cores)"
    if sysinfo.get("gpu"):
        machine += f", {sysinfo['gpu']}" + (f" (driver {sysinfo['driver']})" if sysinfo.get("driver") else "")
    if sysinfo.get("l4t_release"):
        machine += f", L4T {sysinfo['l4t_release']}, power mode {(sysinfo.get('power_mode') or {}).get('name') or 'n/a'}"
    out = [f"# edgetl bench: `{result['run']}`", "", f"{result['created']} on {machine}", "", f"Libraries: {libs}", ""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join("---" if c in ("backend", "precision", "device", "model file", "flags") else "---:"
                              for c in COLUMNS) + "|")
    for r in result["rows"]:
        out.append("| " + " | ".join(c.replace("|", "\\|") if c else "" for c in row_cells(r)) + " |")
    out.append("")
    out += [f"- {line}" for line in caption(result)]
    out += [f"- {line}" for line in skipped_lines(result.get("skipped") or [])]
    out += [f"- {n}" for n in result.get("notes") or []]
    return "\n".join(out) + "\n"
