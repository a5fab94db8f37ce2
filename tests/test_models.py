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
    """Only BatchNorm's num_batches_tracked counter matches between resnet18 and a MobileNetV3: no weights."""
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in _source_model().state_dict().items()}, str(path))
    with pytest.raises(ModelError, match=r"no weight tensor matches model 'mobilenetv3_small_050' "
                                         r"\(only 1 buffer\(s\) such as bn1\.num_batches_tracked\)") as e:
        create_model("mobilenetv3_small_050", num_classes=2, weights=path)
    assert "model" in e.value.hint and "--" not in e.value.hint
    with pytest.raises(ModelError, match="they were trained as 'resnet18'"):
        create_model("mobilenetv3_small_050", num_classes=2, weights=trained_run)
