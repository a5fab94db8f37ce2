"""Training figures: loss/accuracy curves and the confusion matrix (matplotlib, headless)."""

from __future__ import annotations

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
