"""The frozen classifier: presets (docs/original.md §4), any transformers image classifier,
timm models; differentiable preprocessing so the loss reaches the generated pixels."""

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils import UsageError, first_name, hub_guard

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SMOOTH = ("bilinear", "bicubic")  # the F.interpolate modes that take antialias and align_corners


@dataclass
class Preprocess:
    resize: int | tuple[int, int]  # int: the shorter side; (h, w): exact size
    crop: tuple[int, int] | None  # center crop after resizing
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"  # a torch.nn.functional.interpolate mode
    antialias: bool = False  # kornia's default, which the original used (docs/original.md §4)

    def __post_init__(self):
        if self.antialias and self.interpolation not in _SMOOTH:
            raise ValueError(f"antialias needs bilinear or bicubic interpolation, not {self.interpolation}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalised classifier input. No clamping: a clamp would zero
        the gradient of every saturated pixel (docs/original.md §7.7)."""
        h, w = images.shape[-2:]
        if isinstance(self.resize, int):
            # The shorter side becomes `resize`, the other is truncated, computed as kornia's resize
            # does (the original's, docs/original.md §4; torchvision and transformers also truncate).
            s = self.resize
            size = (s, int(s * (w / h))) if w >= h else (int(s / (w / h)), s)
        else:
            size = tuple(self.resize)
        if size != (h, w):
            # align_corners False is kornia's choice (None) for bilinear/bicubic; nearest takes neither option.
            smooth = dict(align_corners=False, antialias=self.antialias) if self.interpolation in _SMOOTH else {}
            images = F.interpolate(images, size=size, mode=self.interpolation, **smooth)
        if self.crop is not None:
            (ch, cw), (h, w) = self.crop, images.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            images = images[..., top : top + ch, left : left + cw]
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std


# docs/original.md §4. The two ViT-MAE checkpoints read the mean of the patch tokens. All three resize
# as the original (kornia): bicubic, no antialiasing (docs/original.md §4).
PRESETS = {
    "inet": ("google/vit-large-patch16-224", Preprocess(256, (224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic"), "cls"),
    "inat": ("vesteinn/vit-mae-inat21", Preprocess(224, (224, 224), IMAGENET_MEAN, IMAGENET_STD, "bicubic"), "mean"),
    "cub": ("vesteinn/vit-mae-cub", Preprocess(224, (224, 224), IMAGENET_MEAN, IMAGENET_STD, "bicubic"), "mean"),
}
_RESAMPLE = {0: "nearest", 1: "bilinear", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}


class Classifier(nn.Module):
    """images in [0, 1] -> logits over `labels` (class names, index = class index)."""

    def __init__(self, model: nn.Module, prep: Preprocess, labels: list[str], pooling: str, name: str):
        super().__init__()
        self.model, self.prep, self.labels, self.pooling, self.name = (model, prep, labels, pooling, name)
        self.notes: list[str] = []  # one-line remarks run.py prints (e.g. where the class names came from)
        self.model.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        x = self.prep(images.float()).to(dtype)
        if self.pooling == "cls":
            out = self.model(x)
            return (out.logits if hasattr(out, "logits") else out).float()
        # Mean of the patch tokens (not CLS) before the final norm, then norm and head: the
        # fine-tuned MAE checkpoints' head (docs/original.md §4).
        base = self.model.base_model
        hidden = base(x, output_hidden_states=True).hidden_states[-1]
        return self.model.classifier(base.layernorm(hidden[:, 1:].mean(dim=1))).float()


def load_classifier(spec: str, pooling: str = "auto", pretrained: bool = True, flag: str = "classifier") -> Classifier:
    """`spec`: a preset (inet, inat, cub), `timm/<model>`, or a transformers hub id / folder.
    `flag` names the option in messages (classifier or eval_classifier)."""
    if spec.startswith("timm/"):
        if pooling == "mean":
            raise UsageError(f"--classifier_pooling mean: only for ViT-style transformers models, not {spec}")
        return _load_timm(spec.removeprefix("timm/"), pretrained, flag=flag)
    from transformers import AutoImageProcessor

    model_id, prep, preset_pooling = _preset_for(spec) or (spec, None, None)
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        model_id = str(folder)
        _check_folder(folder, flag, need_processor=prep is None)
    with _folder_guard(flag, model_id) if folder.is_dir() else hub_guard(f"{flag} {model_id}"):
        model = _load_transformers(model_id, flag)
        if prep is None:
            prep = _prep_from_processor(AutoImageProcessor.from_pretrained(model_id), model_id)
    if pooling == "auto":  # MAE fine-tuning pools the mean by default (docs/original.md §4)
        pooling = preset_pooling or ("mean" if model.config.model_type == "vit_mae" else "cls")
    if pooling == "mean" and not (hasattr(model.base_model, "layernorm") and hasattr(model, "classifier")):
        raise UsageError(f"--classifier_pooling mean: {model_id} is not a ViT-style model (layernorm + classifier)")
    labels = [first_name(model.config.id2label[i]) for i in range(model.config.num_labels)]
    return Classifier(model, prep, labels, pooling, spec)


def _preset_for(spec: str) -> tuple | None:
    """(model to load, preprocessing, pooling) of the preset that `spec` names: by preset name, by
    its model's hub id (any case), or by a snapshot folder of that model in a hub cache
    (.../models--org--name/snapshots/<hash>), so that `--classifier vesteinn/vit-mae-inat21` gets
    the inat preset's pooling and preprocessing."""
    if spec in PRESETS:
        return PRESETS[spec]
    parts = [p.lower() for p in Path(spec).parts]
    for model_id, prep, pooling in PRESETS.values():
        if spec.strip().rstrip("/").lower() == model_id.lower():
            return model_id, prep, pooling
        if "models--" + model_id.lower().replace("/", "--") in parts:
            return spec, prep, pooling
    return None


def _load_transformers(model_id: str, flag: str):
    from transformers import AutoConfig, AutoModelForImageClassification, ViTForImageClassification

    config = AutoConfig.from_pretrained(model_id)
    if config.model_type == "vit_mae":
        # transformers has no ViT-MAE classifier class. A fine-tuned MAE encoder with a head has exactly
        # ViT's weights (the original loads the MAE classifiers with a ViTForImageClassification subclass,
        # vitmae.py); the mean pooling is Classifier's. A pre-training checkpoint has no head: refuse it
        # rather than classify with a random one.
        model, info = ViTForImageClassification.from_pretrained(model_id, output_loading_info=True)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])[0]
            raise UsageError(f"--{flag} {model_id}: a ViT-MAE checkpoint without classifier weights ({missing})")
        return model
    try:
        return AutoModelForImageClassification.from_pretrained(model_id)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        raise UsageError(f"--{flag} {model_id}: a {config.model_type} model is not an image classifier") from e


def _check_folder(folder: Path, flag: str, need_processor: bool) -> None:
    """A local folder: name the file that is missing, not the hub."""
    if not (folder / "config.json").is_file():
        raise UsageError(f"--{flag} {folder}: no config.json there; write the folder with the model's save_pretrained")
    if need_processor and not (folder / "preprocessor_config.json").is_file():
        raise UsageError(
            f"--{flag} {folder}: no preprocessor_config.json there (the classifier's input size, mean and std); "
            f"add it with AutoImageProcessor.from_pretrained(<the model's hub id>).save_pretrained('{folder}')"
        )


@contextmanager
def _folder_guard(flag: str, folder: str):
    try:
        yield
    except OSError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"--{flag} {folder}: cannot be loaded: {first}") from e


def check_same_classes(clf: Classifier, judge: Classifier) -> None:
    """Evaluation compares the class index that each classifier predicts: the eval classifier must
    have the training classifier's classes, in the same order."""
    a, b = ([n.strip().lower() for n in c.labels] for c in (clf, judge))
    if a == b:
        return
    if len(a) != len(b):
        detail = f"it has {len(b)} classes, --classifier {clf.name} has {len(a)}"
    else:
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        i = diff[0]
        detail = f"its class {i + 1} is {judge.labels[i]!r}, --classifier's is {clf.labels[i]!r}"
        detail += f" ({len(diff)} of {len(a)} names differ)"
    raise UsageError(f"--eval_classifier {judge.name}: {detail}; both must have the same classes in the same order")


def _prep_from_processor(proc, model_id: str) -> Preprocess:
    """Antialiased where the mode has it: these models were trained and are evaluated through their
    processor, which shrinks with PIL (or torchvision's antialiased resize in the fast processors)."""
    if not getattr(proc, "do_resize", True):
        raise UsageError(f"--classifier {model_id}: its image processor does not resize; cannot preprocess")
    # size and crop_size: plain dicts in transformers 4.x, SizeDict (also indexable) in 5.x.
    size = proc.size
    resize = size.get("shortest_edge") or (size["height"], size["width"])
    crop = (proc.crop_size["height"], proc.crop_size["width"]) if getattr(proc, "do_center_crop", False) else None
    crop_pct = getattr(proc, "crop_pct", None)
    if crop_pct and isinstance(resize, int):
        # ConvNeXt's processor: below 384 px the shorter side goes to shortest_edge / crop_pct, then a
        # square center crop of shortest_edge; from 384 on a plain warp to a square.
        resize, crop = (int(resize / crop_pct), (resize, resize)) if resize < 384 else ((resize, resize), None)
    resample = getattr(proc, "resample", None)  # PIL's codes; 0 (nearest) is a value, not a missing one
    mode = _RESAMPLE.get(2 if resample is None else int(resample), "bilinear")
    return Preprocess(resize, crop, tuple(proc.image_mean), tuple(proc.image_std), mode, mode in _SMOOTH)


def _load_timm(name: str, pretrained: bool, flag: str = "classifier", **create_args) -> Classifier:
    """`create_args` go to timm.create_model (tests build heads of other sizes with num_classes)."""
    import timm
    import timm.data

    with hub_guard(f"timm model {name}"):
        model = timm.create_model(name, pretrained=pretrained, **create_args)
    cfg = timm.data.resolve_data_config({}, model=model)
    size, mode = cfg["input_size"][1:], cfg["interpolation"]
    # Antialiased as timm's own eval transform (torchvision's resize of PIL images) where the mode has it.
    prep = Preprocess(int(size[0] / cfg["crop_pct"]), tuple(size), cfg["mean"], cfg["std"], mode, mode in _SMOOTH)
    names, note = _timm_class_names(model, f"--{flag} timm/{name}")
    clf = Classifier(model, prep, [first_name(x) for x in names], "cls", f"timm/{name}")
    clf.notes += [note] if note else []
    return clf


def _timm_class_names(model, what: str) -> tuple[list[str], str]:
    """The class names timm knows for the model's head: its own label_names (hub models fine-tuned on
    other data carry them), else the ImageNet subset of that size (1k, 12k, 21k, 22k). A head without
    names is an error: the prompts are made of class names."""
    import timm.data

    n, cfg = model.num_classes, model.pretrained_cfg or {}
    names = cfg.get("label_names")
    if isinstance(names, dict):
        names = [names.get(i, names.get(str(i))) for i in range(n)]
    if names and len(names) == n and all(names):
        descriptions = cfg.get("label_descriptions") or {}
        return [descriptions.get(x) or _wordnet_lemma(x) for x in names], ""
    subset = timm.data.infer_imagenet_subset(model)
    info = timm.data.ImageNetInfo(subset) if subset else None
    if info is None or info.num_classes() != n:
        why = "no label_names in its config, no ImageNet subset of that size"
        raise UsageError(f"{what}: timm has no names for its {n} classes ({why}); the prompts need class names")
    note = f"{what}: class names from timm's {subset} list (chosen by its {n} classes)"
    return info.label_descriptions(), "" if subset == "imagenet-1k" else note


@cache
def _imagenet_info():
    import timm.data

    return timm.data.ImageNetInfo()  # its lemma table covers every ImageNet-21k WordNet id


def _wordnet_lemma(label: str) -> str:
    """'n01440764' (a WordNet id, as ImageNet-trained timm heads name classes) -> 'tench, Tinca tinca'."""
    try:
        return _imagenet_info().label_name_to_description(label)
    except KeyError:
        return label
