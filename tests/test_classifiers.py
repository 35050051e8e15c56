"""Classifier presets, preprocessing, the mean-pooled MAE head, timm models."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from classifiers import IMAGENET_MEAN, IMAGENET_STD, PRESETS, Preprocess, _prep_from_processor, load_classifier


def test_preset_numbers_follow_reference_section_3():
    inet, inat, cub = (PRESETS[k] for k in ("inet", "inat", "cub"))
    assert inet[0] == "google/vit-large-patch16-224" and inet[2] == "cls"
    assert (inet[1].resize, inet[1].crop, inet[1].mean, inet[1].std) == (256, (224, 224), (0.5,) * 3, (0.5,) * 3)
    for model, prep, pooling in (inat, cub):
        assert pooling == "mean" and model.startswith("vesteinn/vit-mae-")
        assert (prep.resize, prep.crop, prep.mean, prep.std) == (224, (224, 224), IMAGENET_MEAN, IMAGENET_STD)
    for _, prep, _ in (inet, inat, cub):  # the original's kornia resize: bicubic, no antialiasing (section 2)
        assert (prep.interpolation, prep.antialias) == ("bicubic", False)


def test_preset_resize_is_kornias_bicubic_without_antialiasing():
    """kornia.geometry.transform.resize(img, 256, interpolation="bicubic") as the original calls it:
    shorter side 256, the other truncated, align_corners False, no antialiasing."""
    img = torch.rand(1, 3, 512, 601)
    prep = PRESETS["inet"][1]
    resized = F.interpolate(img, size=(256, 300), mode="bicubic", align_corners=False, antialias=False)  # 300.5
    expected = (resized[..., 16:240, 38:262] - 0.5) / 0.5
    torch.testing.assert_close(prep(img), expected, atol=1e-6, rtol=0)
    smoothed = F.interpolate(img, size=(256, 300), mode="bicubic", align_corners=False, antialias=True)
    assert not torch.allclose(prep(img), (smoothed[..., 16:240, 38:262] - 0.5) / 0.5, atol=1e-3)


def test_preprocess_resizes_shorter_side_crops_and_normalises():
    img = torch.rand(2, 3, 512, 640, requires_grad=True)
    out = PRESETS["inet"][1](img)
    assert out.shape == (2, 3, 224, 224)
    flat = PRESETS["inet"][1](torch.full((1, 3, 512, 512), 0.75))
    torch.testing.assert_close(flat, torch.full_like(flat, 0.5), atol=1e-5, rtol=0)  # (0.75 - .5) / .5
    out.sum().backward()
    assert img.grad.abs().sum() > 0  # differentiable, nothing clamped


def test_processor_config_is_read(tiny):
    clf = load_classifier(tiny["clf"])
    assert clf.prep == Preprocess((16, 16), None, (0.5,) * 3, (0.5,) * 3, "bilinear", antialias=True)
    assert clf.labels == ["tabby", "tiger cat", "crane", "crane", "great white shark"]  # first name, no "_"


def test_processor_with_plain_dict_sizes_as_transformers_4():
    """transformers 4.x gives `size` and `crop_size` as plain dicts (5.x as SizeDict)."""
    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    proc = SimpleNamespace(
        do_resize=True, size={"shortest_edge": 256}, do_center_crop=True, crop_size={"height": 224, "width": 224}
    )
    proc.resample, proc.image_mean, proc.image_std = 3, list(mean), list(std)
    assert _prep_from_processor(proc, "m") == Preprocess(256, (224, 224), mean, std, "bicubic", antialias=True)
    proc = SimpleNamespace(do_resize=True, size={"height": 32, "width": 48}, resample=0, image_mean=mean, image_std=std)
    prep = _prep_from_processor(proc, "m")
    assert prep == Preprocess((32, 48), None, mean, std, "nearest", antialias=False)
    assert prep(torch.rand(1, 3, 64, 64)).shape == (1, 3, 32, 48)


def test_nearest_interpolation_runs_and_picks_pixels():
    img = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    out = Preprocess(2, None, (0.0,) * 3, (1.0,) * 3, "nearest")(img)
    assert out[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]
    with pytest.raises(ValueError, match="antialias"):
        Preprocess(2, None, (0.0,) * 3, (1.0,) * 3, "nearest", antialias=True)


def test_mean_pooled_head_matches_manual_computation(tiny):
    clf = load_classifier(tiny["clf"], pooling="mean")
    images = torch.rand(3, 3, 16, 16)
    vit, m = clf.model.vit, clf.model
    with torch.no_grad():
        h = vit.embeddings(clf.prep(images))
        for layer in vit.layers if hasattr(vit, "layers") else vit.encoder.layer:  # transformers 5 / 4.x
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
        manual = m.classifier(vit.layernorm(h[:, 1:].mean(1)))
        cls_logits = m(clf.prep(images)).logits
    torch.testing.assert_close(clf(images), manual, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(manual, cls_logits)  # really a different head than CLS


def test_timm_classifier_without_weights():
    import timm.data

    clf = load_classifier("timm/resnet18", pretrained=False)
    assert len(clf.labels) == 1000 and clf.labels[282] == "tiger cat"
    assert clf.prep.crop == (224, 224) and clf.prep.resize == int(224 / 0.95)
    mode = timm.data.resolve_data_config({}, model=clf.model)["interpolation"]
    assert (clf.prep.interpolation, clf.prep.antialias) == (mode, True)  # timm's eval transform (PIL) antialiases
    assert clf(torch.rand(1, 3, 300, 300)).shape == (1, 1000)


def test_mean_pooling_needs_a_vit():
    from utils import UsageError

    with pytest.raises(UsageError, match="classifier_pooling"):
        load_classifier("timm/resnet18", pooling="mean", pretrained=False)


def test_vit_checkpoint_in_the_transformers_4_layout_loads(tiny, tmp_path):
    """The hub's google/vit-large-patch16-224 and the MAE checkpoints use 4.x key names
    (encoder.layer.N.attention.attention.query, ...); they must load, not stay random."""
    import shutil

    from safetensors.torch import load_file, save_file

    old_names = [
        ("layers.", "encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]
    folder = tmp_path / "vit_old"
    shutil.copytree(tiny["clf"], folder)
    state = load_file(folder / "model.safetensors")
    renamed = {}
    for k, v in state.items():
        for new, old in old_names:
            k = k.replace(new, old)
        renamed[k] = v
    assert any("attention.attention.query" in k for k in renamed)
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(str(folder))(images), load_classifier(tiny["clf"])(images))


@pytest.mark.parametrize("edge", [32, 384])
def test_convnext_processor_crop_pct_matches_the_processor(edge):
    """ConvNeXt's processor resizes the shorter side to shortest_edge / crop_pct and center-crops
    below 384 px, and warps to a square from 384 on; ours computes the same pixels."""
    from PIL import Image
    from transformers import ConvNextImageProcessor

    proc = ConvNextImageProcessor(size={"shortest_edge": edge}, crop_pct=0.875, resample=2)
    prep = _prep_from_processor(proc, "m")
    assert (prep.resize, prep.crop) == ((36, (32, 32)) if edge == 32 else ((384, 384), None))
    rgb = (torch.rand(3, 48, 64) * 255).round().to(torch.uint8)
    theirs = proc(Image.fromarray(rgb.permute(1, 2, 0).numpy()), return_tensors="pt").pixel_values
    ours = prep(rgb[None].float() / 255)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().mean() < 0.01  # measured 0.003 (PIL vs torch kernels); a wrong crop gives 0.3
