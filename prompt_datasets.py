"""Prompt templates and the per-epoch prompt list (docs/original.md §2)."""

import torch

# The original's `imagenet_templates_small` (prompt_dataset.py), all 31, in its order. DisCo
# fills the first `number_of_prompts` with the placeholder and then appends " " + class name:
# "A photo of newclas tiger cat" (docs/original.md §2).
TEMPLATES = [
    "A photo of {}",
    "a high resolution realistic image of {}",
    "A close-up photo of a {}",
    "A rendition of a {}",
    "a photo of a nice {}",
    "A painting of a {}",
    "a good photo of a {}",
    "the photo of a {}",
    "a bright photo of the {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
]

EVAL_TEMPLATE = "A photo of {}"  # evaluation: "A photo of newclas {class}" vs "A photo of a {class}"


def class_prompt(template: str, word: str, class_name: str) -> str:
    """Fill `template` with `word` (the placeholder, or "a" for the baseline), then the class."""
    return f"{template.format(word)} {class_name}"


class PromptDataset:
    """The prompts of one training epoch: `epoch_size` prompts cycling through the first
    `number_of_prompts` templates, shuffled per epoch with a seeded generator so that runs
    are reproducible (the original shuffled with the global RNG)."""

    def __init__(self, placeholder: str, class_name: str, number_of_prompts: int, epoch_size: int):
        if not 1 <= number_of_prompts <= len(TEMPLATES):
            raise ValueError(f"number_of_prompts must be in 1..{len(TEMPLATES)}")
        self.prompts = [class_prompt(t, placeholder, class_name) for t in TEMPLATES[:number_of_prompts]]
        self.epoch_size = epoch_size

    def epoch(self, seed: int, epoch: int) -> list[str]:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(self.epoch_size, generator=g).tolist()
        return [self.prompts[i % len(self.prompts)] for i in order]
