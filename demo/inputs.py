"""The web demo's input checks: what a visitor types (text or numbers) becomes checked values, or one
line saying what is allowed (UsageError). No gradio and no models here."""

import dataclasses
import math
import re
from dataclasses import dataclass

from config import RunConfig
from utils import UsageError
from workspace import resolve_classes

TOKEN_WORD = "S_c"  # what a visitor types for the trained token in a free prompt


@dataclass
class Limits:
    """Bounds of one request, fixed when the server starts (app.py's --max_* flags)."""

    max_epochs: int = 100  # training epochs per request
    max_seeds: int = 32  # seeds per comparison
    max_images: int = 8  # images per generation request
    max_prompt: int = 300  # characters of a free prompt


def shown(value, most: int = 40) -> str:
    """A visitor's value as a message echoes it: numbers as they are (typed or sent as text), other
    text quoted, cut short."""
    number = isinstance(value, str) and math.isfinite(as_number(value))
    text = value.strip() if number else repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= most else text[: most - 1] + "…"


def as_number(value) -> float:
    """Text or a number -> float; NaN for anything else (then refused like a value out of range)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def whole(value, what: str, lo: int, hi: int, why: str = "") -> int:
    """An integer in lo..hi, given as text ("30") or a number; else one line saying what is allowed."""
    x = as_number(value)
    if not (math.isfinite(x) and x == int(x) and lo <= x <= hi):
        raise UsageError(f"{what} {shown(value)}: must be a whole number in {lo}..{hi}{why}")
    return int(x)


def positive(value, what: str, hi: float) -> float:
    """A number above 0 and at most `hi`, as text or a number."""
    x = as_number(value)
    if not (math.isfinite(x) and 0 < x <= hi):
        raise UsageError(f"{what} {shown(value)}: must be a number above 0 and at most {hi:g}")
    return x


def class_choices(labels: list[str]) -> list[str]:
    """'2: stick': the 1-based index (as run.py's --class_index) keeps repeated names apart."""
    return [f"{i + 1}: {name}" for i, name in enumerate(labels)]


def parse_class(cfg: RunConfig, labels: list[str], text) -> int:
    """'2: stick', '2' or 'stick' -> the 0-based class index, checked by workspace.resolve_classes
    (run.py's own check); its messages name the page's field instead of the command-line flags."""
    text = str(text or "").strip()
    m = re.fullmatch(r"(\d+)\s*(?::.*)?", text)
    asked = dict(class_index=m[1], class_name="") if m else dict(class_name=text)
    try:
        if not text or len(text) > 200:
            raise UsageError(f"class {shown(text)}: pick a class from the list")
        classes = resolve_classes(dataclasses.replace(cfg, **asked), labels)
    except UsageError as e:
        raise UsageError(re.sub(r"--class_(index|name)", "class", str(e))) from None
    return classes[0]


def train_settings(cfg: RunConfig, limits: Limits, epochs, lr, seed, grad_steps) -> dict:
    """The page's four training fields, checked: RunConfig fields for dataclasses.replace."""
    steps = cfg.num_of_SD_inference_steps
    return dict(
        num_train_epochs=whole(epochs, "epochs", 1, limits.max_epochs, " (the server's --max_epochs)"),
        lr=positive(lr, "lr", 10),
        seed=whole(seed, "seed", 0, 2**32 - 1),
        grad_steps=whole(grad_steps, "grad_steps", 1, steps, " (the sampler's steps)"),
    )


def prompt_text(prompt, placeholder: str, most: int) -> str:
    """A free prompt, 'S_c' replaced by the tokenizer's word for the token."""
    text = str(prompt or "").strip()
    if not text or len(text) > most:
        raise UsageError(f"prompt: must be 1..{most} characters")
    return text.replace(TOKEN_WORD, placeholder)
