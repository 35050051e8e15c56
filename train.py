"""Training one class token (REFERENCE.md sections 1 and 2, without the defects of section 4)."""

import json
import math
import time
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from diffusion import decode, denoise, encode, initial_noise, set_token
from prompt_datasets import PromptDataset
from utils import atomic_path, save_image, write_text


def train_step(sd, clf, prompts: list[str], noise: torch.Tensor, target: int, cfg):
    """One micro-batch: prompts -> denoising (a graph only through the last `grad_steps` steps)
    -> VAE decode -> classifier -> summed cross-entropy toward `target`."""
    cond = encode(sd, prompts)  # the only input that depends on the token
    with torch.no_grad():
        uncond = encode(sd, [""]).expand(len(prompts), -1, -1)
    latents = denoise(sd, noise, cond, uncond, cfg.num_of_SD_inference_steps, cfg.guidance_scale, cfg.grad_steps)
    images = decode(sd, latents)
    logits = clf(images)
    loss = F.cross_entropy(logits, torch.full((len(prompts),), target, device=logits.device), reduction="sum")
    return loss, logits.detach().argmax(1), images.detach()


def epoch_gradient(sd, clf, prompts, noise, target: int, cfg, bs: int, scale: float = 1.0, on_images=None):
    """One epoch's images in micro-batches of `bs`; each micro-batch's summed loss x scale / epoch
    size is backpropagated, so the token's accumulated gradient is that of the epoch's mean loss
    (batch 1 with accumulation, as the original, gives the same gradient: tests/test_batching.py).
    Returns the mean loss and the predicted classes."""
    loss_sum, preds = torch.zeros((), device=sd.device), []
    for s in range(0, len(prompts), bs):
        loss, pred, images = train_step(sd, clf, prompts[s : s + bs], noise[s : s + bs], target, cfg)
        (loss * scale / len(prompts)).backward()
        loss_sum += loss.detach()
        preds += pred.tolist()
        if on_images is not None:
            on_images(s, images, pred.tolist())
    return loss_sum.item() / len(prompts), preds


def save_train_images(folder, labels: list[str], epoch: int, start: int, images, preds: list[int]) -> None:
    """e003_02_282_tiger_cat.png: epoch, image, predicted class. Compress level 1: PNG's default
    level costs about as much as the GPU work per image."""
    for k, (im, p) in enumerate(zip(images, preds)):
        save_image(folder / f"e{epoch:03d}_{start + k:02d}_{p}_{labels[p]}.png", im, compress_level=1)


def micro_batch_size(cfg, device: torch.device) -> int:
    """`batch_size`, or automatically: the whole epoch on CPU; on a GPU as many images as free
    memory allows, from REFERENCE.md section 7's measurements at 512 px (about 4 GiB fixed,
    3.4 GiB per image with checkpointing, 4.4 without), scaled by pixels and gradient steps."""
    if cfg.batch_size:
        return min(cfg.batch_size, cfg.epoch_size)
    if device.type != "cuda":
        return cfg.epoch_size
    free_gib = torch.cuda.mem_get_info(device)[0] / 2**30
    per_image = (3.4 if cfg.gradient_checkpointing else 4.4) * cfg.height * cfg.width / 512**2
    per_image *= 1 + 0.1 * (cfg.grad_steps - 1)
    fits = max(1, min(cfg.epoch_size, int((0.9 * free_gib - 4) / per_image)))
    n = -(-cfg.epoch_size // fits)  # fewest micro-batches, balanced: 5 -> 3 + 2, not 4 + 1
    return -(-cfg.epoch_size // n)


def save_token(path, placeholder: str, value: torch.Tensor) -> None:
    """diffusers' textual-inversion format: one tensor under the token's name (REFERENCE.md 5)."""
    with atomic_path(path) as tmp:
        save_file({placeholder: value.detach().float().cpu().contiguous()}, tmp)


def load_token(path, placeholder: str) -> torch.Tensor:
    tensors = load_file(str(path))
    value = tensors.get(placeholder, next(iter(tensors.values())))
    return value.reshape(-1)


def train_class(cfg, sd, clf, target: int, name: str, paths) -> dict:
    """Optimise S_c for class `target`; write the best token, the log and a summary."""
    start = time.time()
    set_token(sd, sd.init_embedding)
    opt = torch.optim.AdamW([sd.token], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
    prompts = PromptDataset(cfg.placeholder_token, name, cfg.number_of_prompts, cfg.epoch_size)
    bs = micro_batch_size(cfg, sd.device)
    # fp16 only: scale the loss so the token's small gradient does not underflow in half precision.
    scale = cfg.loss_scale if sd.dtype == torch.float16 else 1.0
    best_loss, best_token, best_epoch = math.inf, sd.token.detach().clone(), -1
    since_best = bad_in_row = skipped = 0
    log, stop = [], "num_train_epochs"
    bar = tqdm(range(cfg.num_train_epochs), desc=paths.dir_name, leave=False, dynamic_ncols=True)
    for epoch in bar:
        epoch_prompts = prompts.epoch(cfg.seed, epoch)
        # The paper reuses the same epoch_size noises every epoch; fresh_noise draws new ones.
        noise = initial_noise(sd, n=cfg.epoch_size, seed=cfg.seed + (epoch if cfg.fresh_noise else 0))
        opt.zero_grad(set_to_none=True)
        save = partial(save_train_images, paths.img_dir / "train", clf.labels, epoch)
        epoch_loss, preds = epoch_gradient(sd, clf, epoch_prompts, noise, target, cfg, bs, scale, save)
        accuracy = sum(p == target for p in preds) / len(preds)
        # Clip after backward (the original clipped before it: REFERENCE.md section 4).
        sd.token.grad.div_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_([sd.token], cfg.max_grad_norm).item()
        finite = math.isfinite(epoch_loss) and math.isfinite(grad_norm)
        log.append(dict(epoch=epoch, loss=epoch_loss, accuracy=accuracy, predictions=preds, grad_norm=grad_norm))
        log[-1] |= dict(lr=cfg.lr, skipped=not finite, prompts=epoch_prompts)
        write_text(paths.log, "".join(json.dumps(e) + "\n" for e in log))
        bar.set_postfix(loss=f"{epoch_loss:.3f}", acc=f"{accuracy:.2f}")
        if not finite:  # fp16 overflow and the like: skip this update, count it
            skipped, bad_in_row, scale = skipped + 1, bad_in_row + 1, max(1.0, scale / 2)
            warnings.warn(f"{paths.dir_name} epoch {epoch}: non-finite loss or gradient, update skipped", stacklevel=2)
            if bad_in_row >= cfg.max_nonfinite:
                stop = f"{bad_in_row} non-finite updates in a row (try --mixed_precision no or bf16, or lower --lr)"
                break
            continue
        bad_in_row = 0
        if epoch_loss < best_loss:  # the token that produced the lowest epoch loss is kept
            best_loss, best_token, best_epoch, since_best = epoch_loss, sd.token.detach().clone(), epoch, 0
        else:
            since_best += 1
        if accuracy > cfg.accuracy_stop:
            stop = f"accuracy {accuracy:.2f} > {cfg.accuracy_stop}"
            break
        if since_best >= cfg.early_stopping:
            stop = f"no loss improvement for {cfg.early_stopping} epochs"
            break
        opt.step()
    bar.close()
    set_token(sd, best_token)
    save_token(paths.token, cfg.placeholder_token, best_token)
    summary = dict(epochs=len(log), best_epoch=best_epoch, best_loss=best_loss, stop=stop, nonfinite_skipped=skipped)
    return summary | dict(micro_batch_size=bs, seconds=round(time.time() - start, 2))
