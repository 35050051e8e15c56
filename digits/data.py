"""The digits world's data: sklearn's 8x8 digits as 16x16 RGB images, and the caption words."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Word of each digit 0..9. Three words are shared by two digits (lexical ambiguity).
DIGIT_WORDS = ["loop", "stick", "two", "curl", "four", "five", "loop", "stick", "curl", "nine"]
AMBIGUOUS = {"stick": (1, 7), "loop": (0, 6), "curl": (3, 8)}
WORDS = list(dict.fromkeys(DIGIT_WORDS))  # the 7 distinct words, in digit order of first use
# The caption templates the world was trained with (fixed here so that a rebuild gives the same
# world). The first three are the original's first three, the ones DisCo trains with by default.
CAPTION_TEMPLATES = [
    "A photo of {}",
    "a high resolution realistic image of {}",
    "A close-up photo of a {}",
    "a rendering of {}",
    "a cropped photo of {}",
    "a good photo of {}",
    "a bright photo of {}",
    "a clean photo of {}",
]
IMAGE_SIZE = 16
# Recommended generation settings for the saved pipeline (DDIM, "leading" spacing, see README).
RECOMMENDED = {"height": 16, "width": 16, "num_inference_steps": 15, "guidance_scale": 5.0}
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


def id2label() -> dict[int, str]:
    return {i: w for i, w in enumerate(DIGIT_WORDS)}


def label2id() -> dict[str, int]:
    """Word -> first digit that carries it (no collisions: each word appears once)."""
    out: dict[str, int] = {}
    for i, w in enumerate(DIGIT_WORDS):
        out.setdefault(w, i)
    return out


def load_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as float images (N, 3, 16, 16) in [0, 1] and labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous()
    return x, torch.from_numpy(d.target.astype(np.int64))


def split_indices(labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified, seeded split: (train indices, held-out indices)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, te = train_test_split(
        idx, test_size=HELD_OUT_FRACTION, stratify=labels.numpy(), random_state=SPLIT_SEED, shuffle=True
    )
    return np.sort(tr), np.sort(te)


def load_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_held_out, y_held_out); images in [0, 1], shape (n, 3, 16, 16)."""
    x, y = load_images()
    tr, te = split_indices(y)
    return x[tr], y[tr], x[te], y[te]
