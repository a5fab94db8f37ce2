"""Does transfer beat training from scratch on the demo's digits task, and with which source?

Target task: digits 5-9 (scikit-learn's digits, 32 px), k labelled images per class drawn per seed from a
labelled pool, scored on a fixed held-out half of each class that no source ever sees. Sources, made here
with no download:

  digits04   supervised: the same network trained on digits 0-4 with their labels (edgetl finetune)
  rotation   self-supervised: trained to predict the turn (0/90/180/270) of every unlabelled image, i.e.
             all of digits 0-9 except the held-out val (edgetl.pretrain; Gidaris et al., ICLR 2018)

Arms: scratch (random init, every layer at the full rate) and transfer with each strategy (linear, partial,
full, lp-ft, as edgetl finetune runs them: edgetl's own strategy, phase, param-group and train-step code).
Both arms get the same budget: the same number of optimiser steps of the same batch size, the same
learning rate, schedule, augmentation and seed; the final weights are scored (no checkpoint is picked on
the val images). Each finished arm is appended to RESULTS (JSON) at once, so a partial sweep is usable, and
a re-run skips what is there.

    nice -n 10 python benchmarks/transfer_evidence.py --out /tmp/te [--seeds 0 1 2] [--labels 1 2 5 10 20 all]
    python benchmarks/transfer_evidence.py --out /tmp/te --report   # table + docs/transfer.png from RESULTS
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np

STRATEGIES = ("linear", "partial", "full", "lp-ft")
SOURCES = ("digits04", "rotation")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="work folder: data, source runs, results.json")
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--img-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labels", nargs="+", default=["1", "2", "5", "10", "20", "all"], help="labelled images per class")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--sources", nargs="+", default=list(SOURCES))
    ap.add_argument("--steps", type=int, default=50, help="optimiser steps per arm (same for every arm)")
    ap.add_argument("--batch-size", type=int, default=16, help="or the whole train set when smaller")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--backbone-lr-scale", type=float, default=0.1, help="transfer backbone rate; lp-ft's fine-tune rate")
    ap.add_argument("--holdout", type=float, default=0.5, help="share of each target class held out as val")
    ap.add_argument("--source-epochs", type=int, default=8)
    ap.add_argument("--rotation-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="1: on a shared machine a second thread mostly waits")
    ap.add_argument("--tag", default="", help="appended to the source's name in RESULTS (a second recipe or source budget)")
    ap.add_argument("--no-scratch", action="store_true", help="skip the scratch arm (another --out has it)")
    ap.add_argument("--report", action="store_true", help="only tabulate and plot what RESULTS holds")
    ap.add_argument("--merge", nargs="*", default=[], help="with --report: more results.json files (parallel sweeps)")
    ap.add_argument("--plot", default=str(Path(__file__).resolve().parent.parent / "docs" / "transfer.png"))
    return ap.parse_args()


def make_sources(args, root: Path, data: dict) -> dict[str, dict]:
    """Train each source once (seed 0); returns {name: {"path", "top1", "seconds"}}."""
    from edgetl.finetune import FinetuneSettings, finetune
    from edgetl.io import read_json
    from edgetl.pretrain import pretrain_rotation, unlabelled_images

    common = dict(model=args.model, pretrained=False, img_size=args.img_size, crop_pct=1.0, batch_size=32,
                  lr=args.lr, augment="crop", workers=0, warmup_epochs=1.0, seed=0)
    made = {}
    for name in args.sources:
        out = root / f"source-{name}"
        t = time.perf_counter()
        if not (out / "metrics.json").exists():
            if name == "digits04":
                finetune(out, FinetuneSettings(data=str(data["source"]), epochs=args.source_epochs, **common),
                         overwrite=True)
            elif name == "rotation":
                pretrain_rotation(unlabelled_images(data["unlabelled"]), out, epochs=args.rotation_epochs, **common)
            else:
                raise SystemExit(f"unknown source {name}")
        m = read_json(out / "metrics.json")
        made[name + args.tag] = {"path": str(out), "top1": m["top1"], "task": "rotation (4 turns)" if name == "rotation" else "digits 0-4",
                      "train_images": m["train_images"], "seconds": round(time.perf_counter() - t, 1)}
        made[name + args.tag].update(epochs=read_json(out / "metrics.json")["epochs_run"],
                                     backbone_lr_scale=args.backbone_lr_scale)
        print(f"source {name}: top-1 {m['top1']:.3f} on its own val ({made[name + args.tag]['task']})", flush=True)
    return made


def shots(pool, k: str, seed: int):
    """k labelled images per class from the pool (its ImageList), drawn by `seed`; 'all' = the whole pool."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(pool.labels)
    picked = []
    for c in range(len(pool.classes)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        picked.extend(idx if k == "all" else idx[:int(k)])
    return pool.subset(sorted(int(i) for i in picked))


def train_arm(args, source: str | None, strategy: str, train, val_x, val_y, seed: int) -> float:
    """One arm, final weights scored on the held-out val; edgetl's strategy/phase/param-group/step code."""
    import torch
    from timm.scheduler import CosineLRScheduler
    from torch import nn
    from torch.utils.data import DataLoader

    from edgetl.data import ImageDataset
    from edgetl.data.transforms import train_transform
    from edgetl.finetune import FinetuneSettings, make_card, seed_everything, train_one_epoch
    from edgetl.models import apply_strategy, create_model, param_groups, set_train_mode, strategy_phases

    seed_everything(seed)
    cfg = FinetuneSettings(data="-", model=args.model, pretrained=False, weights=source, strategy=strategy,
                         img_size=args.img_size, crop_pct=1.0, lr=args.lr, backbone_lr_scale=args.backbone_lr_scale,
                         augment="crop", seed=seed)
    model, report = create_model(cfg.model, len(train.classes), weights=cfg.weights, img_size=cfg.img_size)
    scratch = report.source.get("kind") == "none"
    card = make_card(cfg, model, train.classes, report.source)
    ds = ImageDataset(train, train_transform(card, cfg.augment, seed=seed))
    batch = min(args.batch_size, len(train))
    gen = torch.Generator().manual_seed(seed)

    def batches(n):
        done = 0
        while True:
            for xy in DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, generator=gen):
                if done == n:
                    return
                done += 1
                yield xy

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for phase in strategy_phases(cfg.strategy, args.steps, ft_lr_scale=cfg.backbone_lr_scale):
        apply_strategy(model, phase.strategy, cfg.unfreeze)
        backbone_scale = 1.0 if (scratch or phase.name == "finetune") else cfg.backbone_lr_scale
        lr = cfg.lr * phase.lr_scale
        opt = torch.optim.AdamW(param_groups(model, lr, cfg.weight_decay, backbone_scale, None), lr=lr)
        sched = CosineLRScheduler(opt, t_initial=phase.epochs, lr_min=lr * 1e-2, warmup_t=max(1, phase.epochs // 10),
                                  warmup_lr_init=lr * 1e-2, t_in_epochs=False)
        set_train_mode(model)
        train_one_epoch(model, batches(phase.epochs), opt, criterion, torch.device("cpu"),
                        on_step=lambda i: sched.step_update(i))
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x in torch.from_numpy(val_x).split(256)]).numpy()
    return float((pred == val_y).mean())


def sweep(args) -> None:
    import torch

    from edgetl.data import load_splits
    from edgetl.data.dataset import load_arrays
    from edgetl.data.demo import write_demo_data
    from edgetl.finetune import FinetuneSettings, make_card
    from edgetl.io import read_json, write_json
    from edgetl.models import create_model

    from _common import machine

    torch.set_num_threads(args.threads)
    root = Path(args.out)
    results_path = root / "results.json"
    results = read_json(results_path) if results_path.exists() else {"runs": {}}
    data = write_demo_data(root / "data", size=args.img_size, shots=None, holdout=args.holdout)
    pool, val = load_splits(data["target"])
    probe, _ = create_model(args.model, len(val.classes), img_size=args.img_size)
    card = make_card(FinetuneSettings(data="-", model=args.model, img_size=args.img_size, crop_pct=1.0),
                     probe, val.classes, {"kind": "none"})
    val_x, val_y = load_arrays(val, card)
    t_sources = time.perf_counter()
    results.setdefault("sources", {}).update(make_sources(args, root, data))
    results["setup"] = {"machine": machine(), "date": datetime.date.today().isoformat(), "model": args.model,
                        "img_size": args.img_size, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                        "backbone_lr_scale": args.backbone_lr_scale, "threads": args.threads,
                        "source_epochs": args.source_epochs, "rotation_epochs": args.rotation_epochs, "val_images": len(val), "pool_images": len(pool),
                        "source_seconds": round(time.perf_counter() - t_sources, 1)}
    write_json(results_path, results)
    t0 = time.perf_counter()
    for seed in args.seeds:
        for k in args.labels:
            train = shots(pool, k, seed)
            arms = [] if args.no_scratch else [("scratch", "full")]
            arms += [(s + args.tag, st) for s in args.sources for st in args.strategies]
            for source, strategy in arms:
                key = f"{source}|{strategy}|{k}|{seed}"
                if key in results["runs"]:
                    continue
                t = time.perf_counter()
                path = None if source == "scratch" else results["sources"][source]["path"]
                top1 = train_arm(args, path, strategy, train, val_x, val_y, seed)
                results["runs"][key] = {"top1": top1, "seconds": round(time.perf_counter() - t, 1), "train_images": len(train)}
                write_json(results_path, results)
                print(f"{key:32} top-1 {top1:.3f}  ({results['runs'][key]['seconds']} s, total "
                      f"{time.perf_counter() - t0:.0f} s)", flush=True)
    report(args)


def summarise(results: dict) -> dict:
    """{(source, strategy, k): {"mean", "std", "n", "gain_mean", "gain_min", "wins"}} over seeds; gains are
    paired with the scratch arm of the same k and seed."""
    runs = results["runs"]
    cells: dict = {}
    for key, r in runs.items():
        source, strategy, k, seed = key.split("|")
        cells.setdefault((source, strategy, k), {})[seed] = r["top1"]
    out = {}
    for (source, strategy, k), by_seed in cells.items():
        vals = np.array(list(by_seed.values()))
        row = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals),
               "min": float(vals.min()), "max": float(vals.max())}
        if source != "scratch":
            base = cells.get(("scratch", "full", k), {})
            gains = np.array([v - base[s] for s, v in by_seed.items() if s in base])
            if len(gains):
                row.update(gain_mean=float(gains.mean()), gain_min=float(gains.min()), wins=int((gains > 0).sum()),
                           paired=len(gains))
        out[(source, strategy, k)] = row
    return out


def _sources(cells: dict) -> list[str]:
    return sorted({c[0] for c in cells if c[0] != "scratch"})


def _k_order(k: str) -> float:
    return float("inf") if k == "all" else float(k)


def report(args) -> None:
    from edgetl.io import read_json

    results = read_json(Path(args.out) / "results.json")
    for other in args.merge:
        more = read_json(other)
        results["runs"].update(more["runs"])
        results.setdefault("sources", {}).update(more.get("sources", {}))
    cells = summarise(results)
    ks = sorted({k for _, _, k in cells}, key=_k_order)
    lines = ["| source | strategy | " + " | ".join(f"{k}/class" for k in ks) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in ks) + " |"]
    for source in ["scratch"] + _sources(cells):
        for strategy in (["full"] if source == "scratch" else STRATEGIES):
            row = []
            for k in ks:
                c = cells.get((source, strategy, k))
                if c is None:
                    row.append("–")
                    continue
                text = f"{c['mean']:.3f} ± {c['std']:.3f}"
                if "gain_mean" in c:
                    text += f" ({c['gain_mean'] * 100:+.1f}, {c['wins']}/{c['paired']})"
                row.append(text)
            if any(r != "–" for r in row):
                lines.append(f"| {source} | {'—' if source == 'scratch' else strategy} | " + " | ".join(row) + " |")
    print("\n".join(lines))
    (Path(args.out) / "table.md").write_text("\n".join(lines) + "\n")
    plot(results, cells, ks, Path(args.plot))


def plot(results: dict, cells: dict, ks: list[str], path: Path) -> None:
    from edgetl.io import atomic_path
    from edgetl.plots import pyplot_agg

    plt = pyplot_agg()
    sources = _sources(cells)
    fig, axes = plt.subplots(1, len(sources), figsize=(5.5 * len(sources), 4.2), sharey=True, squeeze=False)
    x = np.arange(len(ks))
    pool = results.get("setup", {}).get("pool_images")
    labels = [f"all (~{pool // 5})" if k == "all" and pool else k for k in ks]

    def curve(ax, source, strategy, **style):
        pts = [(i, cells[(source, strategy, k)]) for i, k in enumerate(ks) if (source, strategy, k) in cells]
        if pts:
            ax.errorbar([i for i, _ in pts], [c["mean"] for _, c in pts], yerr=[c["std"] for _, c in pts], capsize=3,
                        marker="o", **style)

    for ax, source in zip(axes[0], sources):
        curve(ax, "scratch", "full", color="black", linestyle="--", label="from scratch")
        for strategy in STRATEGIES:
            curve(ax, source, strategy, label=f"transfer, {strategy}")
        info = results.get("sources", {}).get(source, {})
        scale = info.get("backbone_lr_scale", results.get("setup", {}).get("backbone_lr_scale"))
        ax.set(title=f"source: {source} ({info.get('task', '')}), backbone at {scale:g}x lr",  xlabel="labelled images per class (digits 5-9)",
               xticks=x, xticklabels=labels)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("top-1 on held-out val (mean ± sd over seeds)")
    setup = results.get("setup", {})
    fig.suptitle(f"{setup.get('model')} at {setup.get('img_size')} px, {setup.get('steps')} steps per arm, "
                 f"{setup.get('val_images')} val images", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    print(f"plot -> {path}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    a = parse_args()
    report(a) if a.report else sweep(a)
