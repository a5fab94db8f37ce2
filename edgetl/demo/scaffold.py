"""A run directory from a timm model without training: for graph tests and latency benchmarks.

Latency and graph structure do not depend on what the weights learned, so this writes a model.safetensors
with an edgetl model card directly (random init, as `edgetl finetune --no-pretrained --epochs 0` would) plus
a few random images as its train/val split, so that edgetl's own export (parity check) and quantize
(calibration) run on it unchanged. Accuracy on such a run means nothing.
"""

from __future__ import annotations

from pathlib import Path

# One of each architecture family the engine tests and tables cover: TensorRT-RTX must parse and build every graph.
FAMILIES = ("resnet18", "mobilenetv3_small_050", "efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224")


def make_run(root: str | Path, model: str = "resnet18", img_size: int = 224, num_classes: int = 10,
             images_per_class: int = 4) -> Path:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from edgetl.card import ModelCard
    from edgetl.data import ImageList, save_splits
    from edgetl.models import create_model

    torch.manual_seed(0)
    net, _ = create_model(model, num_classes=num_classes, img_size=img_size)
    net.eval()
    cfg = net.pretrained_cfg
    card = ModelCard(model=model, class_names=[str(i) for i in range(num_classes)], input_size=(3, img_size, img_size),
                     resize=img_size, mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                     std=tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    run = Path(root) / f"{model}-{img_size}"
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "model.safetensors"),
              metadata=card.metadata())
    rng = np.random.default_rng(0)
    splits = {"train": ImageList(card.class_names), "val": ImageList(card.class_names)}
    for c, name in enumerate(card.class_names):
        for i in range(images_per_class):
            path = run / "images" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (img_size, img_size, 3), dtype=np.uint8)).save(path)
            split = splits["train" if i % 2 == 0 else "val"]
            split.paths.append(str(path))
            split.labels.append(c)
    save_splits(run / "splits.json", splits["train"], splits["val"])
    return run


def export_and_quantize(run: Path, targets: str = "both", fp16: bool = False) -> None:
    """edgetl's own export and int8 quantization (and fp16 if asked) of a make_run() run; accuracy is
    meaningless on random weights, so the accuracy budget is switched off (no sensitivity pass)."""
    from edgetl.export.run import export
    from edgetl.quantize import QuantizeSettings, quantize

    export(run)
    quantize(run, QuantizeSettings(precision="int8", target=targets, max_drop=100.0, batch_size=4))
    if fp16:
        quantize(run, QuantizeSettings(precision="fp16", max_drop=100.0, batch_size=4))
