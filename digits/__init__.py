"""A tiny, real text-to-image world built from standard components (see digits/README.md).

Folders written by ``python digits/build.py``: ``pipeline`` (a diffusers
StableDiffusionPipeline), ``classifier`` (ViT) and ``classifier_b`` (ConvNeXt).
"""

import os

from digits.data import AMBIGUOUS, DIGIT_WORDS, RECOMMENDED, WORDS, load_split

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINE = os.path.join(HERE, "pipeline")
CLASSIFIER = os.path.join(HERE, "classifier")
CLASSIFIER_B = os.path.join(HERE, "classifier_b")

__all__ = [
    "AMBIGUOUS",
    "CLASSIFIER",
    "CLASSIFIER_B",
    "DIGIT_WORDS",
    "HERE",
    "PIPELINE",
    "RECOMMENDED",
    "WORDS",
    "load_split",
]
