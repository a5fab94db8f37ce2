"""TensorRT-RTX's real ONNX parser and builder on the graphs edgetl writes: family x precision -> parsed,
built, engine MB, build seconds, network layers. Runs on a CPU (TensorRT-RTX compiles ahead of time).

Each family is a random-init timm model (edgetl.demo.scaffold: parse and build need no trained weights) put
through edgetl's own export and quantize (int8 TensorRT form, fp16), then `edgetl.tensorrt.build.build(...,
target="rtx")` for compute capabilities 8.6, 8.9, 12.0. "layers" is the parsed network's layer count
(INetworkDefinition.num_layers, before fusion): TensorRT-RTX's engine inspector needs a GPU to deserialize
the engine, so the built engine's own layers cannot be listed here.

    nice -n 10 python benchmarks/rtx_build_table.py [--img-size 224] [--families resnet18 ...] [--write-docs]

--write-docs replaces the table in docs/build.md (between the rtx-build-table markers).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_and_quantize, machine, make_run  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "build.md"
BEGIN, END = "<!-- rtx-build-table:begin -->", "<!-- rtx-build-table:end -->"


def rows_for(family: str, root: Path, img_size: int, batch: str) -> list[dict]:
    from edgetl.tensorrt.build import BuildSettings, build
    from edgetl.errors import EdgetlError, first_line

    t = time.perf_counter()
    run = make_run(root, family, img_size=img_size, num_classes=10, images_per_class=4)
    export_and_quantize(run, "tensorrt", fp16=True)
    print(f"{family}: export + quantize {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for precision in ("fp32", "fp16", "int8"):
        row = {"family": family, "precision": precision, "parsed": True, "built": False, "mb": None, "s": None,
               "layers": None, "note": ""}
        try:
            res = build(run, BuildSettings(precision=precision, target="rtx", batch=batch))
        except EdgetlError as e:
            text = e.message
            row["parsed"] = "ONNX parser cannot take it" not in text
            row["note"] = (text.splitlines()[1].strip() if "\n" in text else first_line(e))[:140]
        else:
            row.update(built=True, mb=res.plan.stat().st_size / 2**20, s=res.seconds, layers=res.layers)
        rows.append(row)
        print(f"  {precision}: {row}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    def yes(flag: bool) -> str:
        return "yes" if flag else "**no**"

    def num(value, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    lines = ["| family | precision | parsed | built | engine MB | build s | layers | note |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['precision']} | {yes(r['parsed'])} | {yes(r['built'])} | "
                     f"{num(r['mb'], '.1f')} | {num(r['s'], '.1f')} | {num(r['layers'], 'd')} | "
                     f"{r['note'].replace('|', '/')} |")
    return "\n".join(lines)


def main() -> None:
    from edgetl.demo.scaffold import FAMILIES

    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", default="1,1,8", help="optimisation profile MIN,OPT,MAX")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--write-docs", action="store_true", help="replace the table in docs/build.md")
    args = ap.parse_args()
    import tensorrt_rtx

    root = Path(args.out or tempfile.mkdtemp(prefix="edgetl-rtx-"))
    rows = [r for fam in args.families for r in rows_for(fam, root, args.img_size, args.batch)]
    head = (f"TensorRT-RTX {tensorrt_rtx.__version__}, CPU-only ahead-of-time build for compute capability "
            f"8.6, 8.9, 12.0; {args.img_size} px, 10 classes, random init, batch profile {args.batch}; "
            f"{datetime.date.today()}; {machine()}; "
            f"`nice -n 10 python benchmarks/rtx_build_table.py --img-size {args.img_size}`")
    text = f"{head}\n\n{table(rows)}"
    print(text)
    if args.write_docs:
        doc = DOC.read_text()
        if BEGIN not in doc or END not in doc:
            sys.exit(f"{DOC}: no {BEGIN} ... {END} markers")
        before, rest = doc.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        DOC.write_text(f"{before}{BEGIN}\n{text}\n{END}{after}")
        print(f"wrote the table into {DOC}")


if __name__ == "__main__":
    main()
