"""The frozen classifier: presets (REFERENCE.md section 3), any transformers image classifier,
timm models; differentiable preprocessing so the loss reaches the generated pixels."""

from dataclasses import dataclass

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
    antialias: bool = False  # kornia's default, which the original used (REFERENCE.md section 2)

    def __post_init__(self):
        if self.antialias and self.interpolation not in _SMOOTH:
            raise ValueError(f"antialias needs bilinear or bicubic interpolation, not {self.interpolation}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalised classifier input. No clamping: a clamp would zero
        the gradient of every saturated pixel (REFERENCE.md section 8)."""
        h, w = images.shape[-2:]
        if isinstance(self.resize, int):
            # The shorter side becomes `resize`, the other is truncated, computed as kornia's resize
            # does (the original's, REFERENCE.md section 2; torchvision and transformers also truncate).
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


# REFERENCE.md section 3. The two ViT-MAE checkpoints read the mean of the patch tokens. All three resize
# as the original (kornia): bicubic, no antialiasing (REFERENCE.md section 2).
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
        self.model.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        x = self.prep(images.float()).to(dtype)
        if self.pooling == "cls":
            out = self.model(x)
            return (out.logits if hasattr(out, "logits") else out).float()
        # Mean of the patch tokens (not CLS) before the final norm, then norm and head: the
        # fine-tuned MAE checkpoints' head (REFERENCE.md section 3).
        base = self.model.base_model
        hidden = base(x, output_hidden_states=True).hidden_states[-1]
        return self.model.classifier(base.layernorm(hidden[:, 1:].mean(dim=1))).float()


def load_classifier(spec: str, pooling: str = "auto", pretrained: bool = True) -> Classifier:
    """`spec`: a preset (inet, inat, cub), `timm/<model>`, or a transformers hub id / folder."""
    if spec.startswith("timm/"):
        if pooling == "mean":
            raise UsageError(f"--classifier_pooling mean: only for ViT-style transformers models, not {spec}")
        return _load_timm(spec.removeprefix("timm/"), pretrained)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model_id, prep, preset_pooling = PRESETS.get(spec, (spec, None, "cls"))
    with hub_guard(f"classifier {model_id}"):
        model = AutoModelForImageClassification.from_pretrained(model_id)
        if prep is None:
            prep = _prep_from_processor(AutoImageProcessor.from_pretrained(model_id), model_id)
    pooling = preset_pooling if pooling == "auto" else pooling
    if pooling == "mean" and not (hasattr(model.base_model, "layernorm") and hasattr(model, "classifier")):
        raise UsageError(f"--classifier_pooling mean: {model_id} is not a ViT-style model (layernorm + classifier)")
    labels = [first_name(model.config.id2label[i]) for i in range(model.config.num_labels)]
    return Classifier(model, prep, labels, pooling, spec)


def _prep_from_processor(proc, model_id: str) -> Preprocess:
    """Antialiased where the mode has it: these models were trained and are evaluated through their
    processor, which shrinks with PIL (or torchvision's antialiased resize in the fast processors)."""
    if not getattr(proc, "do_resize", True):
        raise UsageError(f"--classifier {model_id}: its image processor does not resize; cannot preprocess")
    # size and crop_size: plain dicts in transformers 4.x, SizeDict (also indexable) in 5.x.
    size = proc.size
    resize = size.get("shortest_edge") or (size["height"], size["width"])
    crop = (proc.crop_size["height"], proc.crop_size["width"]) if getattr(proc, "do_center_crop", False) else None
    resample = getattr(proc, "resample", None)  # PIL's codes; 0 (nearest) is a value, not a missing one
    mode = _RESAMPLE.get(2 if resample is None else int(resample), "bilinear")
    return Preprocess(resize, crop, tuple(proc.image_mean), tuple(proc.image_std), mode, mode in _SMOOTH)


def _load_timm(name: str, pretrained: bool) -> Classifier:
    import timm
    import timm.data

    with hub_guard(f"timm model {name}"):
        model = timm.create_model(name, pretrained=pretrained)
    cfg = timm.data.resolve_data_config({}, model=model)
    size, mode = cfg["input_size"][1:], cfg["interpolation"]
    # Antialiased as timm's own eval transform (torchvision's resize of PIL images) where the mode has it.
    prep = Preprocess(int(size[0] / cfg["crop_pct"]), tuple(size), cfg["mean"], cfg["std"], mode, mode in _SMOOTH)
    n = model.num_classes
    info = timm.data.ImageNetInfo()
    names = info.label_descriptions() if n == info.num_classes() else [f"class {i}" for i in range(n)]
    return Classifier(model, prep, [first_name(x) for x in names], "cls", f"timm/{name}")
