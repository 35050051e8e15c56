"""Token files: the format every tool loads (docs/original.md §8), written atomically and read back
against the model's encoders."""

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from utils import UsageError, atomic_path, first_line

# The metadata that says which run wrote an embeddings-folder file: a file of another run is never replaced.
OWNER_KEYS = ("disco_class", "disco_exp_id")


def token_tensors(sd, value: torch.Tensor, placeholder: str, webui: bool = False) -> dict[str, torch.Tensor]:
    """A token value as the file every tool loads (docs/original.md §8): SD 1.x/2.x diffusers' one tensor
    under the token's name (`webui`: [1, d] under `emb_params`, a one-tensor file both those tools read); the
    other families one [1, d] row per text encoder under the keys ComfyUI and AUTOMATIC1111 read (clip_l,
    clip_g, t5xxl), untrained encoders' rows included (the initializer's)."""
    value = value.detach().float().cpu()
    if sd.family.classic:
        return {"emb_params": value.reshape(1, -1).contiguous()} if webui else {placeholder: value.contiguous()}
    rows = {e.key: e.init for e in sd.encoders} | {e.key: value[part] for e, part in sd.trained()}
    return {k: v.reshape(1, -1).contiguous().cpu() for k, v in rows.items()}


def token_value(sd, tensors: dict[str, torch.Tensor], placeholder: str, path) -> torch.Tensor:
    """The token value of a file written by `token_tensors` (diffusers' FLUX scripts write `t5` for
    `t5xxl`: accepted)."""
    if not tensors:
        raise UsageError(f"{path}: holds no tensor, not a token file")
    if sd.family.classic:
        return tensors.get(placeholder, next(iter(tensors.values()))).reshape(-1)
    rows = {("t5xxl" if k == "t5" else k): v.reshape(-1).float() for k, v in tensors.items()}
    parts = []
    for e in sd.encoders:
        row = rows.get(e.key)
        if row is None or row.shape != e.init.shape:
            got = "none" if row is None else f"{len(row)} values"
            raise UsageError(f"{path}: needs a {e.key} row of {len(e.init)} values for this model, found {got}")
        if e.trained:
            parts.append(row)
        elif not torch.allclose(row, e.init.cpu()):
            raise UsageError(f"{path}: its {e.key} row was trained; add {e.key} to --train_encoders")
    return torch.cat(parts)


def save_token(path, sd, placeholder: str, value: torch.Tensor) -> None:
    """The token file every tool loads (`token_tensors`), written atomically."""
    with atomic_path(path) as tmp:
        save_file(token_tensors(sd, value, placeholder), tmp)


def embedding_word(dir_name: str, exp_id: str) -> str:
    """The prompt word of a class's file in the embeddings folder, which ComfyUI (`embedding:<word>`) and
    AUTOMATIC1111 (`<word>`) take from the file's name: "disco-" + the class folder, + "-" + exp_id unless it
    is "default"; each run of characters other than A-Z a-z 0-9 - becomes one "_", so that neither tool's
    prompt syntax (spaces, commas, parentheses, brackets, colons, <, |, dots of a file name) cuts or weights it."""
    word = "disco-" + dir_name + ("" if exp_id == "default" else f"-{exp_id}")
    return re.sub(r"[^A-Za-z0-9-]+", "_", word)


def save_embedding(path, sd, placeholder: str, value: torch.Tensor, metadata: dict[str, str]) -> None:
    """The token in the layout AUTOMATIC1111 and ComfyUI read (`token_tensors(webui=True)`), with `metadata`
    (OWNER_KEYS among it) in the file's header, written atomically."""
    with atomic_path(path) as tmp:
        save_file(token_tensors(sd, value, placeholder, webui=True), tmp, metadata=metadata)


def owner_problem(path, owner: dict[str, str]) -> str | None:
    """Why the run may not replace the file at `path` (None: absent, or written for the same `owner`: the
    same class and experiment, OWNER_KEYS)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            found = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a bad header or a cut file
        return f"{path}: not a safetensors file ({first_line(e)})"
    theirs = {k: found.get(k) for k in OWNER_KEYS}
    if None in theirs.values():
        return f"{path}: not written by a DisCo run (no class and experiment in its metadata)"
    if theirs != {k: owner[k] for k in OWNER_KEYS}:
        return f"{path}: written by another run (class {theirs['disco_class']}, experiment {theirs['disco_exp_id']})"
    return None


def load_token(path, sd, placeholder: str) -> torch.Tensor:
    """The token value of a file, checked against this model: a file that is missing, empty, damaged or
    shaped for another model is one line naming the file and what is wrong (UsageError)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no token file here")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: empty file, not a token; train the class again (--train True)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a bad header or a cut file
        raise UsageError(f"{path}: damaged token file ({first_line(e)}); train the class again") from e
    value = token_value(sd, tensors, placeholder, path)
    if not value.is_floating_point() or value.numel() != sd.init_embedding.numel() or not value.isfinite().all():
        raise UsageError(
            f"{path}: not a token of this model (it needs {sd.init_embedding.numel()} finite values, "
            f"found {value.numel()} of {value.dtype}); was it trained with another --sd_model?"
        )
    return value.float()
