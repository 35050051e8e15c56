"""The frozen classifier: presets (REFERENCE.md section 3), any transformers image classifier,
timm models; differentiable preprocessing so the loss reaches the generated pixels."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils import UsageError, first_name, hub_guard

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    resize: int | tuple[int, int]  # int: the shorter side; (h, w): exact size
    crop: tuple[int, int] | None  # center crop after resizing
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalised classifier input. No clamping: a clamp would zero
        the gradient of every saturated pixel (REFERENCE.md section 8)."""
        h, w = images.shape[-2:]
        if isinstance(self.resize, int):
            s = self.resize / min(h, w)
            size = (round(h * s), round(w * s))
        else:
            size = tuple(self.resize)
        if size != (h, w):
            aa = self.interpolation in ("bilinear", "bicubic")
            images = F.interpolate(images, size=size, mode=self.interpolation, antialias=aa, align_corners=False)
        if self.crop is not None:
            (ch, cw), (h, w) = self.crop, images.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            images = images[..., top : top + ch, left : left + cw]
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std


# REFERENCE.md section 3. The two ViT-MAE checkpoints read the mean of the patch tokens.
PRESETS = {
    "inet": ("google/vit-large-patch16-224", Preprocess(256, (224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic"), "cls"),
    "inat": ("vesteinn/vit-mae-inat21", Preprocess(224, (224, 224), IMAGENET_MEAN, IMAGENET_STD, "bilinear"), "mean"),
    "cub": ("vesteinn/vit-mae-cub", Preprocess(224, (224, 224), IMAGENET_MEAN, IMAGENET_STD, "bilinear"), "mean"),
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
    if not getattr(proc, "do_resize", True):
        raise UsageError(f"--classifier {model_id}: its image processor does not resize; cannot preprocess")
    size = proc.size
    resize = size.shortest_edge if getattr(size, "shortest_edge", None) else (size.height, size.width)
    crop = (proc.crop_size.height, proc.crop_size.width) if getattr(proc, "do_center_crop", False) else None
    resample = _RESAMPLE.get(int(getattr(proc, "resample", 2) or 2), "bilinear")
    return Preprocess(resize, crop, tuple(proc.image_mean), tuple(proc.image_std), resample)


def _load_timm(name: str, pretrained: bool) -> Classifier:
    import timm
    import timm.data

    with hub_guard(f"timm model {name}"):
        model = timm.create_model(name, pretrained=pretrained)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = cfg["input_size"][1:]
    prep = Preprocess(int(size[0] / cfg["crop_pct"]), tuple(size), cfg["mean"], cfg["std"], cfg["interpolation"])
    n = model.num_classes
    info = timm.data.ImageNetInfo()
    names = info.label_descriptions() if n == info.num_classes() else [f"class {i}" for i in range(n)]
    return Classifier(model, prep, [first_name(x) for x in names], "cls", f"timm/{name}")
