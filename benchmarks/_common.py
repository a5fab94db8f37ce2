"""Helpers shared by the benchmark scripts: a run directory made from a timm model without training.

Latency does not depend on what the weights learned, so the scripts write a model.safetensors with an
edgetl model card directly (random init, as `edgetl finetune --no-pretrained --epochs 0` would) instead of
training; accuracy figures come from the tests and `edgetl bench` on real runs.
"""

from __future__ import annotations

import platform
from pathlib import Path


def make_run(root: Path, model: str = "resnet18", img_size: int = 224, num_classes: int = 10) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    from edgetl.card import ModelCard

    torch.manual_seed(0)
    net = timm.create_model(model, pretrained=False, num_classes=num_classes).eval()
    cfg = net.pretrained_cfg
    card = ModelCard(model=model, class_names=[str(i) for i in range(num_classes)], input_size=(3, img_size, img_size),
                     resize=img_size, mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                     std=tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    run = Path(root) / f"{model}-{img_size}"
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "model.safetensors"),
              metadata=card.metadata())
    return run


def machine() -> str:
    from edgetl.bench import system_info

    info = system_info()
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    return f"{info['cpu']} ({info['cpu_count']} cores){gpu}, {platform.system()} {platform.release()}"
