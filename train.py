"""Training one class token (docs/original.md §1, §2 and §5, without the defects of §7)."""

import json
import math
import time
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from diffusion import checkpointing_mode, decode, denoise, encode, initial_noise, set_token, word_embedding
from prompt_datasets import PromptDataset
from utils import atomic_path, save_image, write_text


def straight_through_clamp(images: torch.Tensor) -> torch.Tensor:
    """Forward: clamp(0, 1), the image the original classifies in training and that evaluation
    classifies. Backward: identity, so saturated pixels still pass gradient (a plain clamp
    zeroes it: docs/original.md §7.7)."""
    return images + (images.clamp(0, 1) - images).detach()


def train_step(sd, clf, prompts: list[str], noise: torch.Tensor, target: int, cfg):
    """One micro-batch: prompts -> denoising (a graph only through the last `grad_steps` sampler
    steps) -> VAE decode -> clamp (straight-through) -> classifier -> summed cross-entropy."""
    cond = encode(sd, prompts)  # the only input that depends on the token
    with torch.no_grad():
        uncond = encode(sd, [""]).expand(len(prompts), -1, -1)
    with checkpointing_mode(sd):
        latents = denoise(sd, noise, cond, uncond, cfg.num_of_SD_inference_steps, cfg.guidance_scale, cfg.grad_steps)
        images = straight_through_clamp(decode(sd, latents))
    logits = clf(images)
    loss = F.cross_entropy(logits, torch.full((len(prompts),), target, device=logits.device), reduction="sum")
    return loss, logits.detach().argmax(1), images.detach()


def epoch_gradient(sd, clf, prompts, noise, target: int, cfg, bs: int, scaler=None, on_images=None):
    """One epoch's images in micro-batches of `bs`; each micro-batch's summed loss / epoch size
    (times the fp16 loss scale, if a GradScaler is given) is backpropagated, so the token's
    accumulated gradient is that of the epoch's mean loss (batch 1 with accumulation, as the
    original, gives the same gradient: tests/test_batching.py). Returns the mean loss and the
    predicted classes."""
    loss_sum, preds = torch.zeros((), device=sd.device), []
    for s in range(0, len(prompts), bs):
        loss, pred, images = train_step(sd, clf, prompts[s : s + bs], noise[s : s + bs], target, cfg)
        mean_part = loss / len(prompts)
        (scaler.scale(mean_part) if scaler is not None else mean_part).backward()
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
    memory allows, from the measurements in docs/performance.md at 512 px (about 4 GiB fixed,
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
    """diffusers' textual-inversion format: one tensor under the token's name (docs/original.md §8)."""
    with atomic_path(path) as tmp:
        save_file({placeholder: value.detach().float().cpu().contiguous()}, tmp)


def load_token(path, placeholder: str) -> torch.Tensor:
    tensors = load_file(str(path))
    value = tensors.get(placeholder, next(iter(tensors.values())))
    return value.reshape(-1)


def make_scaler(sd, cfg) -> torch.amp.GradScaler:
    """The original's `Accelerator(mixed_precision="fp16")` + `accelerator.backward`: torch's
    dynamic GradScaler (initial scale 2^16, halved and the step skipped on overflow, doubled
    after 2000 clean steps). Off (a pass-through) unless the UNet and VAE run in fp16."""
    return torch.amp.GradScaler(sd.device.type, init_scale=cfg.loss_scale, enabled=sd.dtype == torch.float16)


def update_token(opt, scaler, token: torch.nn.Parameter, max_grad_norm: float, loss: float) -> dict:
    """Unscale, clip after backward (the original clipped before it: docs/original.md §7.1),
    step unless the loss or gradient is not finite; the scaler halves its scale after an
    overflow. Returns what the epoch's log records about the update."""
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_([token], max_grad_norm).item()
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if finite:
        scaler.step(opt)
    scaler.update()
    return dict(grad_norm=grad_norm, skipped=not finite, zero_grad=finite and grad_norm == 0.0, loss_scale=scale)


def train_class(cfg, sd, clf, target: int, name: str, paths, on_epoch=None) -> dict:
    """Optimise S_c for class `target` with the original's schedule and stopping rules
    (docs/original.md §5); write the kept token, the log and a summary.

    `on_epoch(entry, images)`, if given, is called after each epoch with its log entry and its
    images ([N, 3, H, W] in [0, 1]); returning True stops training (the kept token is as below)."""
    start = time.time()
    init = word_embedding(sd, name) if cfg.init_from_class_name else sd.init_embedding
    set_token(sd, init)
    adamw = partial(torch.optim.AdamW, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
    opt, scaler = adamw([sd.token]), make_scaler(sd, cfg)
    prompts = PromptDataset(cfg.placeholder_token, name, cfg.number_of_prompts, cfg.epoch_size)
    bs = micro_batch_size(cfg, sd.device)
    best_loss, kept, kept_epoch = math.inf, sd.token.detach().clone(), None
    noise_seed, since_best, bad_in_row = cfg.seed, 0, 0
    accuracies = []  # training accuracies since the (re)start
    log, stop = [], "num_train_epochs"
    bar = tqdm(range(cfg.num_train_epochs), desc=paths.dir_name, leave=False, dynamic_ncols=True)
    for epoch in bar:
        epoch_prompts = prompts.epoch(cfg.seed, epoch)
        # The paper reuses the same epoch_size noises every epoch (until a collapse re-seeds them);
        # fresh_noise draws new ones each epoch.
        noise = initial_noise(sd, n=cfg.epoch_size, seed=noise_seed + (epoch if cfg.fresh_noise else 0))
        opt.zero_grad(set_to_none=True)
        images = []
        save = partial(save_train_images, paths.img_dir / "train", clf.labels, epoch)
        on_images = partial(_keep_and_save, images, save)
        epoch_loss, preds = epoch_gradient(sd, clf, epoch_prompts, noise, target, cfg, bs, scaler, on_images)
        accuracy = sum(p == target for p in preds) / len(preds)
        token_before = sd.token.detach().clone()  # the token that produced this epoch's images
        update = update_token(opt, scaler, sd.token, cfg.max_grad_norm, epoch_loss)
        entry = dict(epoch=epoch, loss=epoch_loss, accuracy=accuracy, predictions=preds, **update)
        log.append(entry | dict(lr=cfg.lr, noise_seed=noise_seed, prompts=epoch_prompts))
        write_text(paths.log, "".join(json.dumps(e) + "\n" for e in log))
        bar.set_postfix(loss=f"{epoch_loss:.3f}", acc=f"{accuracy:.2f}")
        user_stop = on_epoch is not None and on_epoch(log[-1], torch.cat(images))
        if update["zero_grad"] and sum(e["zero_grad"] for e in log) == 1:
            warnings.warn(f"{paths.dir_name}: gradient underflow: try --mixed_precision bf16", stacklevel=2)
        if not math.isfinite(epoch_loss) or (update["skipped"] and not scaler.is_enabled()):
            # No scaler can recover this: no update, counted, a non-improving epoch. (An fp16
            # gradient overflow with a finite loss is the scaler's business, as in the original:
            # the step is skipped, the scale halved, and the epoch counts as any other.)
            bad_in_row, since_best = bad_in_row + 1, since_best + 1
            warnings.warn(f"{paths.dir_name} epoch {epoch}: non-finite loss or gradient, update skipped", stacklevel=2)
            if bad_in_row >= cfg.max_nonfinite:
                stop = f"{bad_in_row} non-finite updates in a row (try --mixed_precision no or bf16, or lower --lr)"
                break
        else:
            bad_in_row = 0
            # The original's rules, in its order, after the step: a loss above twice the best
            # re-seeds the noises ("training collapse"); a new best keeps the token AFTER this
            # step (the original saves its pipeline there; keep="best_epoch": the token that
            # produced the loss, since one large step can undo it); otherwise the counter drops.
            if cfg.reseed_on_collapse and epoch_loss > 2 * best_loss:
                noise_seed += 1
            if epoch_loss < best_loss:
                kept = sd.token.detach().clone() if cfg.keep == "after_step" else token_before
                best_loss, kept_epoch, since_best = epoch_loss, epoch, 0
            else:
                since_best += 1
            if accuracy > cfg.accuracy_stop:  # keep the token that reached the accuracy (README: differences)
                kept, kept_epoch = token_before, epoch
                stop = f"accuracy {accuracy:.2f} > {cfg.accuracy_stop}"
                break
            accuracies.append(accuracy)
            if _on_plateau(accuracies, cfg.restart_after):
                # Not an original rule (README: differences): the token never beat its first epoch's
                # accuracy on these noises; start again from the initializer with new noises.
                set_token(sd, init)
                opt, noise_seed, accuracies = adamw([sd.token]), noise_seed + 1, []
        if since_best > cfg.early_stopping:  # the original stops when its counter drops below zero
            stop = f"no loss improvement for {since_best} epochs"
            break
        if user_stop:
            stop = "stopped by the user"
            break
    bar.close()
    set_token(sd, kept)
    save_token(paths.token, cfg.placeholder_token, kept)
    summary = dict(epochs=len(log), best_epoch=kept_epoch, best_loss=best_loss, stop=stop)
    summary |= dict(
        kept_token=_kept_description(stop, kept_epoch, cfg.keep), noise_seeds=sorted({e["noise_seed"] for e in log})
    )
    summary |= dict(nonfinite_skipped=sum(e["skipped"] for e in log), zero_grad_epochs=sum(e["zero_grad"] for e in log))
    return summary | dict(micro_batch_size=bs, seconds=round(time.time() - start, 2))


def _on_plateau(accuracies: list[float], after: int) -> bool:
    """`after` epochs (0: never) and the training accuracy never rose above the first one's."""
    return after > 0 and len(accuracies) >= after and max(accuracies) <= accuracies[0]


def _keep_and_save(images: list, save, start: int, batch: torch.Tensor, preds: list[int]) -> None:
    images.append(batch.cpu())
    save(start, batch, preds)


def _kept_description(stop: str, epoch: int | None, keep: str) -> str:
    if epoch is None:
        return "the initializer's embedding (no finite epoch)"
    if stop.startswith("accuracy"):
        return f"the token that produced epoch {epoch} (accuracy stop)"
    if keep == "best_epoch":
        return f"the token that produced epoch {epoch} (lowest epoch loss)"
    return f"the token after epoch {epoch}'s update (lowest epoch loss)"
