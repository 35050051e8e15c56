"""Small helpers: user errors, class selection, atomic files, images."""

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


class UsageError(Exception):
    """Bad input from the user: run.py prints the message on one line and exits with 2."""


def parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("true", "t", "yes", "y", "1", "on"):
        return True
    if low in ("false", "f", "no", "n", "0", "off"):
        return False
    raise ValueError(text)  # argparse turns this into "argument --x: invalid boolean value: 'maybe'"


parse_bool.__name__ = "boolean"  # the name argparse puts in that message


def class_ranges(spec: str) -> list[tuple[int, int]]:
    """'283' / '1-10' / '283,285,290-299' (1-based, as the CLI) -> 0-based half-open ranges, checked
    without expanding them (a range can be far larger than any classifier)."""
    out = []
    for part in str(spec).split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
        if not m:
            raise UsageError(f"--class_index {spec!r}: expected 1-based numbers, ranges or lists like 283,285,290-299")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if lo < 1 or hi < lo:
            raise UsageError(f"--class_index {spec!r}: indices are 1-based (>= 1) and ranges go upward")
        out.append((lo - 1, hi))
    return out


def parse_class_spec(spec: str) -> list[int]:
    """The sorted 0-based indices of `class_ranges(spec)`."""
    return sorted({i for lo, hi in class_ranges(spec) for i in range(lo, hi)})


def class_dir_name(index0: int, name: str) -> str:
    """'283_tiger_cat': the 1-based CLI index keeps repeated names (ImageNet's two 'crane's) apart."""
    return f"{index0 + 1}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def first_name(label: str) -> str:
    """'tiger cat, Felis catus' -> 'tiger cat'; 'great_white_shark' -> 'great white shark'."""
    return label.split(",")[0].strip().replace("_", " ")


# ---------------------------------------------------------------- atomic files
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds,
    so a killed run never leaves a half-written file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp and safetensors make 0600 files; outputs get the usual ones
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_tmp(*dirs: Path) -> None:
    """Delete the temporary files of `atomic_path` that a killed run (kill -9) left behind."""
    for d in dirs:
        for p in Path(d).rglob(".*.tmp*") if Path(d).exists() else []:
            p.unlink(missing_ok=True)


def remove_stale_tmp_of(path: Path) -> None:
    """The temporary files of `atomic_path` for `path` alone, in a folder that other processes write too."""
    for p in path.parent.glob(f".{path.name}.*.tmp*") if path.parent.is_dir() else []:
        p.unlink(missing_ok=True)


def empty_dir(path) -> None:
    """Remove what a run's own folder holds, so that no file of an earlier run stays beside the new
    ones (the folder itself stays: the web demo claims run names by creating it)."""
    for child in Path(path).iterdir() if Path(path).is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def copy_file(src, dst) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def first_line(e: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_json(path, default=None):
    """A JSON file the run wrote earlier (`default` when it is absent); damaged: one line naming it."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot be read as JSON ({first_line(e)}); delete it or run the class again") from e


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """[3, H, W] in [0, 1] -> PIL; `scale` enlarges tiny images (nearest) so they can be seen."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr)
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def save_image(path, image, compress_level: int = 6) -> None:
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", compress_level=compress_level)


def view_scale(size: int) -> int:
    """Enlarge images smaller than 128 px for grids (the digits world is 16 px)."""
    return max(1, 128 // size)


def font(size: int = 14) -> ImageFont.ImageFont:
    """PIL's bundled scalable font (PIL >= 10.1), readable at any size; its tiny bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def comparison_grid(rows: list[tuple[str, list[torch.Tensor], list[str]]], max_cols: int = 10) -> Image.Image:
    """Labelled grid: one row per (title, images, captions), e.g. baseline over token; tiles at least
    128 px wide so that a caption fits under each, in a scalable font."""
    scale = max(view_scale(rows[0][1][0].shape[-1]), -(-128 // rows[0][1][0].shape[-1]))
    tiles = [[to_pil(im, scale) for im in images[:max_cols]] for _, images, _ in rows]
    w, h = tiles[0][0].size
    title_h, cap_h, pad = 26, 20, 4
    cols = max(len(t) for t in tiles)
    grid = Image.new("RGB", (cols * (w + pad), len(rows) * (title_h + h + cap_h)), "white")
    draw = ImageDraw.Draw(grid)
    for r, ((title, _, captions), row_tiles) in enumerate(zip(rows, tiles)):
        y = r * (title_h + h + cap_h)
        draw.text((4, y + 5), title, fill="black", font=font(16))
        for c, tile in enumerate(row_tiles):
            grid.paste(tile, (c * (w + pad), y + title_h))
            draw.text((c * (w + pad) + 2, y + title_h + h + 2), captions[c][:18], fill="black", font=font(13))
    return grid


def _hub_cause(e: BaseException):
    """The hub error behind `e`: transformers and diffusers re-raise them as OSError."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    kinds = (GatedRepoError, RepositoryNotFoundError, LocalEntryNotFoundError)
    while e is not None and not isinstance(e, kinds):
        e = e.__cause__ or e.__context__
    return e


@contextmanager
def hub_guard(what: str):
    """Turn the hub's failures while loading `what` into one clear line saying what to do."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        yield
    except OSError as e:
        cause = _hub_cause(e)
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if isinstance(cause, GatedRepoError):
            msg = "the model is gated: accept its licence on its hub page, then run `hf auth login`"
        elif isinstance(cause, RepositoryNotFoundError):
            msg = "no such repository on the hub (check the id), or it is private (`hf auth login`)"
        elif cause is not None or offline or "connect" in str(e):
            msg = (
                f"not in the local cache and the hub cannot be reached{' (HF_HUB_OFFLINE=1)' if offline else ''}; "
                f"download it once with network access{' (unset HF_HUB_OFFLINE)' if offline else ''}, "
                "or pass a local folder"
            )
        else:
            msg = "cannot be loaded: " + first_line(e)
        raise UsageError(f"{what}: {msg}") from e
