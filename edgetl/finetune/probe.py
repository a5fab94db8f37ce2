"""The frozen-feature floor (baseline probe): scikit-learn's logistic regression on the source backbone's pooled
features, fitted on the train split and scored on the split that scores the fine-tune.

A fine-tune that ends below it has lost what the source knew (too high a backbone rate, overfitting, a broken
recipe): the run says so. It costs one forward pass over the train and scored images (no augmentation) and a
few seconds of scikit-learn, so it is cheap next to training, but not free: it runs only when asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from edgetl.data import ImageDataset, ImageList, make_loader
from edgetl.data.transforms import eval_transform
from edgetl.finetune.settings import FinetuneSettings


@dataclass
class ProbeScore:
    top1: float
    macro_f1: float
    features: int      # width of the pooled features
    seconds: float


def probe_hint() -> str:
    """What to try when a fine-tune ends below the floor (one home: the warning and the docs quote it)."""
    return ("try --strategy linear or lp-ft, a lower --lr or --backbone-lr-scale, fewer --epochs, or "
            "--freeze-bn-stats")


@torch.no_grad()
def pooled_features(model: torch.nn.Module, items: ImageList, transform, batch_size: int, device: torch.device,
                    workers: int = 0) -> np.ndarray:
    """The backbone's pooled features (timm's forward_head with pre_logits: what the head sees), one row an image."""
    model.eval()
    loader = make_loader(ImageDataset(items, transform), batch_size, shuffle=False, workers=workers, device=device,
                         seed=0)
    rows = []
    for x, _ in loader:
        rows.append(model.forward_head(model.forward_features(x.to(device)), pre_logits=True).float().cpu().numpy())
    return np.concatenate(rows)


def linear_probe(cfg: FinetuneSettings, train_items: ImageList, scored: ImageList, device: torch.device) -> ProbeScore:
    """Fit on `train_items`' frozen features and score on `scored`'s, with the run's model, source and input size.

    Logistic regression as scikit-learn ships it (L2, C=1, lbfgs) on the raw pooled features: the probe is a floor,
    not a tuned model. (Standardised features scored 3-7 points lower on digits through ImageNet Lite0 at
    32-96 px: C=1 then regularises every feature alike, the weak ones included.)"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from edgetl.finetune.loop import make_card
    from edgetl.models import create_model

    t0 = time.perf_counter()
    model, report = create_model(cfg.model, len(train_items.classes), pretrained=cfg.pretrained and cfg.weights is None,
                                 weights=cfg.weights, img_size=cfg.img_size)
    model = model.to(device)
    transform = eval_transform(make_card(cfg, model, train_items.classes, report.source))
    batch = max(cfg.batch_size, 64)
    x_train = pooled_features(model, train_items, transform, batch, device, cfg.workers)
    x_scored = pooled_features(model, scored, transform, batch, device, cfg.workers)
    clf = LogisticRegression(max_iter=5000)
    clf.fit(x_train, np.asarray(train_items.labels))
    predicted = clf.predict(x_scored)
    labels = np.asarray(scored.labels)
    return ProbeScore(top1=float((predicted == labels).mean()),
                      macro_f1=float(f1_score(labels, predicted, average="macro", labels=range(len(scored.classes)),
                                              zero_division=0)),
                      features=int(x_train.shape[1]), seconds=time.perf_counter() - t0)
