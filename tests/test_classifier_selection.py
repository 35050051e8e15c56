"""Which classifier a --classifier names, how it is loaded and pooled, and whose class names it has:
the MAE checkpoints by hub id, their checkpoint layout, a second classifier with other classes,
timm heads of other sizes, local folders missing a file."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import LABELS, ROOT, build_tiny_vit, tiny_args
from safetensors.torch import load_file

from classifiers import PRESETS, _load_timm, check_same_classes, load_classifier
from run import main
from utils import UsageError

MAE_ID = "vesteinn/vit-mae-inat21"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def build_mae_checkpoint(path, model_type="vit", architectures=("ViTForImageClassification",), labels=LABELS):
    """A tiny model in the layout of the vesteinn/vit-mae-* checkpoints as the original loads them
    (vitmae.py: a ViTForImageClassification subclass, from_pretrained): ViT weights under `vit.`
    with transformers 4.x key names, no pooler, the MAE head's norm as `vit.layernorm`, a linear
    `classifier`. 224 px input as the inat/cub presets feed it (patch 32 keeps it small)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(3)
    cfg = ViTConfig(
        image_size=224,
        patch_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = ViTForImageClassification(cfg)
    with torch.no_grad():  # non-trivial norms, so a wrong or skipped norm shows in the logits
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type=model_type, architectures=list(architectures))
    if model_type == "vit_mae":  # what a ViTMAEConfig adds
        config.update(mask_ratio=0.75, norm_pix_loss=False, decoder_hidden_size=32, decoder_num_hidden_layers=1)
    (path / "config.json").write_text(json.dumps(config))
    keys = set(load_file(path / "model.safetensors"))
    assert {"vit.encoder.layer.1.attention.attention.query.weight", "vit.layernorm.weight", "classifier.weight"} <= keys
    assert not any("pooler" in k for k in keys)
    return path


def mean_pooled_logits_by_hand(folder, pixels):
    """The original's CustomViTModel forward, written out from the raw checkpoint tensors: encoder,
    mean of the patch tokens (not CLS), final norm, linear head."""
    w, c = load_file(folder / "model.safetensors"), json.loads((folder / "config.json").read_text())
    d, heads, eps = c["hidden_size"], c["num_attention_heads"], c["layer_norm_eps"]

    def lin(x, name):
        return F.linear(x, w[name + ".weight"], w[name + ".bias"])

    def norm(x, name):
        return F.layer_norm(x, (d,), w[name + ".weight"], w[name + ".bias"], eps)

    e = "vit.embeddings."
    h = F.conv2d(
        pixels,
        w[e + "patch_embeddings.projection.weight"],
        w[e + "patch_embeddings.projection.bias"],
        stride=c["patch_size"],
    )
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([w[e + "cls_token"].expand(len(h), -1, -1), h], dim=1) + w[e + "position_embeddings"]
    b, t = h.shape[:2]
    for i in range(c["num_hidden_layers"]):
        p = f"vit.encoder.layer.{i}."
        y = norm(h, p + "layernorm_before")
        q, k, v = (
            lin(y, p + "attention.attention." + n).view(b, t, heads, -1).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v
        h = h + lin(att.transpose(1, 2).reshape(b, t, d), p + "attention.output.dense")
        h = h + lin(F.gelu(lin(norm(h, p + "layernorm_after"), p + "intermediate.dense")), p + "output.dense")
    return lin(norm(h[:, 1:].mean(dim=1), "vit.layernorm"), "classifier")


def use_cache(monkeypatch, path: str) -> None:
    """Point the hub cache at `path` for this test: huggingface_hub's constant, and transformers 4.x's own
    copy of it (read at import), so the same test holds on the lowest allowed versions (.ci/floors)."""
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", path)
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", path, raising=False)


def as_hub_cache(folder, cache, repo_id=MAE_ID):
    """Place a saved model where the hub cache keeps a downloaded repo, so that loading `repo_id`
    offline finds it, through the same calls as a real download."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    shutil.copytree(folder, repo / "snapshots" / SNAPSHOT)
    return repo / "snapshots" / SNAPSHOT


LAYOUTS = [
    ("vit", ("ViTForImageClassification",)),  # a timm/MAE checkpoint converted to transformers' ViT
    ("vit", ("CustomViTForImageClassification",)),  # saved from the original's subclass
    ("vit_mae", ("ViTForImageClassification",)),  # AutoModelForImageClassification refuses this type
]


@pytest.mark.parametrize("model_type, architectures", LAYOUTS)
def test_mae_checkpoint_by_hub_id_loads_mean_pooled_with_the_preset(tmp_path, monkeypatch, model_type, architectures):
    folder = build_mae_checkpoint(tmp_path / "mae", model_type, architectures)
    snapshot = as_hub_cache(folder, tmp_path / "cache")
    use_cache(monkeypatch, str(tmp_path / "cache"))
    images = torch.rand(2, 3, 256, 320)
    inat_prep = PRESETS["inat"][1]
    expected = mean_pooled_logits_by_hand(folder, inat_prep(images))
    cls = load_classifier(MAE_ID, pooling="cls")  # an explicit pooling still wins
    assert cls.pooling == "cls"
    with torch.no_grad():
        assert not torch.allclose(cls(images), expected, atol=1e-3)
    copied = tmp_path / "elsewhere" / snapshot.relative_to(tmp_path / "cache")
    shutil.copytree(snapshot, copied)
    for spec in (MAE_ID, "inat", str(copied)):  # hub id, preset name, a snapshot folder of another cache
        if spec == str(copied):  # loaded from the folder itself, not by the hub id
            use_cache(monkeypatch, str(tmp_path / "empty"))
        clf = load_classifier(spec)
        assert clf.pooling == "mean" and clf.prep == inat_prep, spec
        with torch.no_grad():
            torch.testing.assert_close(clf(images), expected, atol=1e-4, rtol=1e-4)


def test_vit_mae_folder_defaults_to_mean_pooling(tmp_path):
    """A fine-tuned ViT-MAE saved elsewhere (its own folder, its own processor): mean pooling, as MAE
    fine-tuning pools by default; a stock ViT stays CLS."""
    from transformers import ViTImageProcessor

    folder = build_mae_checkpoint(tmp_path / "mae", "vit_mae")
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    clf = load_classifier(str(folder))
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            clf(images), mean_pooled_logits_by_hand(folder, clf.prep(images)), atol=1e-4, rtol=1e-4
        )
    assert clf.pooling == "mean" and clf.labels[1] == "tiger cat"
    assert load_classifier(str(build_tiny_vit(tmp_path / "vit"))).pooling == "cls"


def test_mae_pretraining_checkpoint_without_head_is_refused(tmp_path, monkeypatch):
    """A ViT-MAE checkpoint without a head would classify with random weights: one clear error."""
    from safetensors.torch import save_file

    folder = build_mae_checkpoint(tmp_path / "mae", "vit_mae")
    state = load_file(folder / "model.safetensors")
    headless = {k: v for k, v in state.items() if not k.startswith("classifier")}
    save_file(headless, folder / "model.safetensors", metadata={"format": "pt"})  # as save_pretrained writes it
    as_hub_cache(folder, tmp_path / "cache")
    use_cache(monkeypatch, str(tmp_path / "cache"))
    with pytest.raises(UsageError, match=r"--classifier vesteinn/vit-mae-inat21: .*without classifier weights"):
        load_classifier(MAE_ID)


@pytest.mark.parametrize(
    "labels, needle",
    [
        (
            {0: "tiger cat", 1: "tabby, tabby cat", 2: "crane", 3: "crane", 4: "great_white_shark"},
            "its class 1 is 'tiger cat', --classifier's is 'tabby' (2 of 5 names differ)",
        ),
        ({0: "tabby", 1: "tiger cat", 2: "crane"}, "it has 3 classes, --classifier"),
    ],
)
def test_eval_classifier_with_other_classes_is_refused_before_any_model_loads(tiny, tmp_path, capsys, labels, needle):
    other = build_tiny_vit(tmp_path / "other", seed=2, labels=labels)
    capsys.readouterr()  # what building the model printed
    # An SD model that cannot load: the error must come first, before any diffusion model is touched.
    args = tiny_args(tiny, tmp_path / "out", "--eval_classifier", str(other), "--sd_model", "nobody/no-such-model")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--eval_classifier {other}: " in err and needle in err, err


def test_eval_classifier_with_the_same_classes_is_accepted(tiny, tmp_path):
    same = build_tiny_vit(tmp_path / "same", seed=2, labels={k: v.upper() for k, v in LABELS.items()})  # case aside
    check_same_classes(load_classifier(tiny["clf"]), load_classifier(str(same), flag="eval_classifier"))  # no error


@pytest.mark.parametrize("n, subset", [(11821, "imagenet-12k"), (21843, "imagenet-21k-goog")])
def test_timm_heads_of_imagenet_subsets_get_their_real_names(n, subset):
    import timm.data

    from utils import first_name

    clf = _load_timm("resnet18", pretrained=False, num_classes=n)
    expected = [first_name(x) for x in timm.data.ImageNetInfo(subset).label_descriptions()]
    assert len(clf.labels) == n and clf.labels == expected and "tiger cat" in clf.labels
    assert not any(x == f"class {i}" for i, x in enumerate(clf.labels))  # the old numbered names
    assert clf.notes == [
        f"--classifier timm/resnet18: class names from timm's {subset} list (chosen by its {n} classes)"
    ]
    assert _load_timm("resnet18", pretrained=False).notes == []  # ImageNet-1k: nothing to say


def test_timm_head_without_names_is_a_clear_error():
    with pytest.raises(UsageError, match=r"^--eval_classifier timm/resnet18: timm has no names for its 7 classes"):
        _load_timm("resnet18", pretrained=False, flag="eval_classifier", num_classes=7)


def test_timm_label_names_of_the_model_win():
    """Hub timm models fine-tuned on other data carry label_names (WordNet ids or plain names) and
    may carry descriptions."""
    names = ("n01440764", "n01443537", "dog_rose")
    overlay = dict(label_names=names, label_descriptions={"n01443537": "goldfish, Carassius auratus"})
    clf = _load_timm("resnet18", pretrained=False, num_classes=3, pretrained_cfg_overlay=overlay)
    assert clf.labels == ["tench", "goldfish", "dog rose"] and clf.notes == []


def test_run_says_where_timm_class_names_come_from(tiny, tmp_path, capsys, monkeypatch):
    """A timm head of ImageNet-12k through the command line (no hub here: the model is built without
    weights): the note is printed and the prompts use the real class name."""
    import timm

    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained, **kw: create(name, False, num_classes=11821))
    out = tmp_path / "out"
    args = tiny_args(tiny, out, "--classifier", "timm/resnet18", "--num_train_epochs", "1", "--test_size", "1")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "run.py: note: --classifier timm/resnet18: class names from timm's imagenet-12k list" in err
    metrics = json.loads(next(out.glob("pipeline_token/2_*/default/metrics.json")).read_text())
    assert metrics["prompts"]["token"] == "A photo of newclas cell"  # index 1 of the 12k list: 'cell'


def test_model_that_is_not_an_image_classifier_is_one_line(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(folder)
    shutil.copy(ROOT / "digits" / "classifier" / "preprocessor_config.json", folder)
    with pytest.raises(UsageError, match=rf"^--classifier {folder}: a bert model is not an image classifier$"):
        load_classifier(str(folder))
