"""Token files: the format every tool loads (docs/original.md §8), written atomically and read back
against the model's encoders."""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from utils import UsageError, atomic_path, first_line


def token_tensors(sd, value: torch.Tensor, placeholder: str, webui: bool = False) -> dict[str, torch.Tensor]:
    """A token value as the file every tool loads (docs/original.md §8): SD 1.x/2.x diffusers' one tensor
    under the token's name (`webui`: [1, d] under `emb_params`, as AUTOMATIC1111 saves embeddings); the
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


def save_token(path, sd, placeholder: str, value: torch.Tensor, webui: bool = False) -> None:
    """The token file every tool loads (`token_tensors`), written atomically."""
    with atomic_path(path) as tmp:
        save_file(token_tensors(sd, value, placeholder, webui), tmp)


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
