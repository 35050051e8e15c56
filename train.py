"""Training class tokens (docs/original.md §1, §2 and §5; the defects of §7 only when asked for).

A *run* is one token being trained: one class, one training-noise seed, the original's rules (its own
AdamW state, loss scale, clipping, stopping counter, re-seeding and kept token). Several runs train
together: a forward pass holds the live runs' images, each prompt carries its own run's placeholder
(one embedding slot per run), and one backward serves them all, since a run's token only enters its
own images. A run that stops leaves the batch."""

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffusion import (
    checkpointing_mode,
    decode,
    denoise,
    encode,
    halved_after_out_of_memory,
    initial_noise,
    longest_prompt,
    set_token,
    unconditional,
)
from prompt_datasets import PromptDataset
from report import training_curve
from utils import save_image, write_text


def straight_through_clamp(images: torch.Tensor) -> torch.Tensor:
    """Forward: clamp(0, 1), the image the original classifies in training and that evaluation
    classifies. Backward: identity, so saturated pixels still pass gradient (a plain clamp
    zeroes it: docs/original.md §7.7)."""
    return images + (images.clamp(0, 1) - images).detach()


def train_step(sd, clf, prompts: list[str], noise: torch.Tensor, targets, cfg):
    """One micro-batch: prompts -> denoising (a graph only through the last `grad_steps` sampler
    steps) -> VAE decode -> clamp -> classifier -> per-image cross-entropy. `targets`: one class for
    all images, or one per image."""
    length = longest_prompt(sd, prompts) if cfg.pad_to_longest else None
    cond = encode(sd, prompts, length, cfg.text_encoder_autocast)  # the only input that depends on a token
    with torch.no_grad():
        uncond = unconditional(sd, length, cfg.text_encoder_autocast)
        uncond = None if uncond is None else uncond.expand(len(prompts))
    with checkpointing_mode(sd):
        latents = denoise(sd, noise, cond, uncond, cfg.num_of_SD_inference_steps, cfg.guidance_scale, cfg.grad_steps)
        images = decode(sd, latents)
        images = images.clamp(0, 1) if cfg.plain_clamp else straight_through_clamp(images)
    logits = clf(images)
    targets = torch.as_tensor(targets, device=logits.device).expand(len(prompts))
    return F.cross_entropy(logits, targets, reduction="none"), logits.detach().argmax(1), images.detach()


LAST_IMAGE_ALONE = 0.01  # the earlier images' projected part of the applied gradient counted as negligible


def clip_regime(clips: list[bool], share: float | None) -> str:
    """What the clip before backward made of an epoch's update (docs/original.md §7.1): "mean" when no
    clip cut; "last image alone" when one cut and the last backward supplies the applied gradient up to
    LAST_IMAGE_ALONE; "mixed" when a clip cut but the earlier images' remainder still counts."""
    if not any(clips):
        return "mean"
    if share is not None and abs(1 - share) <= LAST_IMAGE_ALONE:
        return "last image alone"
    return "mixed"


CPU_FORWARD = 64  # images per forward on the CPU when several runs train together


def micro_batch_size(cfg, device: torch.device, runs: int = 1, limit: int = 0) -> int:
    """Images per forward pass: `batch_size`, or automatically: on the CPU one run's whole epoch, or 64
    images for several runs (larger forwards were slower per image on 2 cores); on a GPU as many
    images as free memory allows, from the measurements at 512 px in docs/performance.md (about 4 GiB
    fixed, 3.4 GiB per image with checkpointing, 4.4 without), scaled by pixels and gradient steps.
    `limit`: at most that many (what fitted after an out-of-memory error, `epoch_step`).
    With several runs, `batch_size` counts one run's images; forwards hold that many from each run."""
    total = cfg.epoch_size * runs
    if cfg.batch_size:
        return min(cfg.batch_size, cfg.epoch_size) * runs
    # On the CPU, 64 images per forward measured fastest on 2 cores (docs/performance.md).
    fits = min(total, max(cfg.epoch_size, CPU_FORWARD))
    if device.type != "cuda" and not limit:
        return fits
    if device.type == "cuda":
        free_gib = torch.cuda.mem_get_info(device)[0] / 2**30
        per_image = (3.4 if cfg.gradient_checkpointing else 4.4) * cfg.height * cfg.width / 512**2
        per_image *= 1 + 0.1 * (cfg.grad_steps - 1)
        fits = max(1, min(total, int((0.9 * free_gib - 4) / per_image)))
    fits = min(fits, limit or fits)
    n = -(-total // fits)  # fewest micro-batches, balanced: 5 -> 3 + 2, not 4 + 1
    return -(-total // n)


def make_scaler(sd, cfg) -> torch.amp.GradScaler:
    """The original's `Accelerator(mixed_precision="fp16")` + `accelerator.backward`: torch's dynamic
    GradScaler (initial scale 2^16, halved and the step skipped on overflow, doubled after 2000 clean
    steps). A pass-through unless the UNet and VAE run in fp16, or the original's clip sequence is
    asked for: its effect depends on the scale (docs/original.md §7.1), so it gets the scale in fp32 too."""
    on = sd.dtype == torch.float16 or cfg.clip_before_backward
    return torch.amp.GradScaler(sd.device.type, init_scale=cfg.loss_scale, enabled=on)


def update_token(opt, scaler, token: torch.nn.Parameter, max_grad_norm: float, loss: float, clip: bool = True):
    """Unscale, clip after backward (unless the original's clip before backward already ran), step
    unless the loss or gradient is not finite; the scaler halves its scale after an overflow. Returns
    what the epoch's log records about the update."""
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    scaler.unscale_(opt)
    if clip:
        grad_norm = torch.nn.utils.clip_grad_norm_([token], max_grad_norm).item()
    else:
        grad_norm = token.grad.norm().item() if token.grad is not None else 0.0
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if finite:
        scaler.step(opt)
    scaler.update()
    return dict(grad_norm=grad_norm, skipped=not finite, zero_grad=finite and grad_norm == 0.0, loss_scale=scale)


@dataclass
class Run:
    """One token being trained, with the original's rules (docs/original.md §5) and its own files."""

    cfg: object
    target: int
    name: str  # the class name in prompts
    seed: int  # training noises and prompt order (a collapse re-seeds with + 1)
    log_path: Path
    img_dir: Path  # training images go here
    init: torch.Tensor
    scaler: torch.amp.GradScaler  # its own loss scale: one run's overflow never skips another's step
    label: str = ""  # names the run in warnings, e.g. 283_tiger_cat
    slot: int = 0
    best_loss: float = math.inf
    kept_epoch: int | None = None
    since_best: int = 0
    bad_in_row: int = 0
    stop: str | None = None
    log: list = field(default_factory=list)
    clips: list = field(default_factory=list)  # this epoch's clips before backward: did each cut?
    before_last: torch.Tensor | None = None  # the gradient right before this epoch's last backward, after its clip
    snapshots: dict = field(default_factory=dict)  # epoch (0-based, as the log) -> the token after its update
    start: float = field(default_factory=time.time)

    def __post_init__(self):
        c = self.cfg
        self.token = torch.nn.Parameter(self.init.detach().clone())
        self.kept, self.noise_seed = self.token.detach().clone(), self.seed
        self.opt = torch.optim.AdamW([self.token], lr=c.lr, betas=c.betas, weight_decay=c.weight_decay, eps=c.eps)

    def epoch_inputs(self, sd, epoch: int) -> tuple[list[str], torch.Tensor]:
        """This epoch's prompts (with the run's slot word) and starting noises (the same every epoch
        until a collapse re-seeds them, as the paper; `fresh_noise`: new ones each epoch)."""
        c = self.cfg
        seed = self.noise_seed + (epoch if c.fresh_noise else 0)
        return self.prompts(epoch, sd.slot_word(self.slot)), initial_noise(sd, n=c.epoch_size, seed=seed)

    def prompts(self, epoch: int, word: str) -> list[str]:
        """The epoch's prompts in image order, with `word` as the placeholder."""
        c = self.cfg
        return PromptDataset(word, self.name, c.number_of_prompts, c.epoch_size).epoch(self.seed, epoch)

    def clip_before_backward(self) -> None:
        """The original's `clip_grad_norm_` before `accelerator.backward` (docs/original.md §7.1): it acts on
        the scaled gradient accumulated so far. Records whether it cut, and what it left: the last call's
        leftover is the earlier images' part of the update (`last_image_share`)."""
        if self.token.grad is not None:
            norm = torch.nn.utils.clip_grad_norm_([self.token], self.cfg.max_grad_norm).item()
            self.clips.append(norm > self.cfg.max_grad_norm)
            self.before_last = self.token.grad.detach().clone()

    def last_image_share(self) -> float | None:
        """The share of the epoch's gradient G that its last backward (the last image at batch 1) added, by
        projection onto G: <G - B, G> / <G, G>, B the gradient right before that backward. The loss scale
        cancels. None without a finite, non-zero gradient."""
        if self.token.grad is None:
            return None
        g = self.token.grad.detach().double()
        last = g - (0 if self.before_last is None else self.before_last.double())
        share = ((last * g).sum() / (g * g).sum()).item()
        return share if math.isfinite(share) else None

    def finish_epoch(self, epoch: int, loss: float, preds: list[int]) -> dict:
        """Update the token, then the original's rules in its order; writes the log. Sets `stop`."""
        c = self.cfg
        accuracy = sum(p == self.target for p in preds) / len(preds)
        token_before = self.token.detach().clone()  # the token that produced this epoch's images
        share = self.last_image_share() if c.clip_before_backward else None  # before unscaling: B is scaled
        update = update_token(self.opt, self.scaler, self.token, c.max_grad_norm, loss, not c.clip_before_backward)
        entry = dict(epoch=epoch, loss=loss, accuracy=accuracy, predictions=preds, **update)
        entry["prompts"] = self.prompts(epoch, c.placeholder_token)  # image j's prompt, as the original logs them
        if c.clip_before_backward:
            entry |= dict(clips=self.clips, last_image_share=share, last_image_regime=clip_regime(self.clips, share))
        self.log.append(entry | dict(lr=c.lr, noise_seed=self.noise_seed, seed=self.seed))
        if c.select_every and (epoch + 1) % c.select_every == 0:  # offered to the selection (selection.keep_best)
            self.snapshots[epoch] = self.token.detach().clone()
        write_text(self.log_path, "".join(json.dumps(e) + "\n" for e in self.log))
        if update["zero_grad"] and sum(e["zero_grad"] for e in self.log) == 1:
            warnings.warn(f"{self.label}: gradient underflow: try --mixed_precision bf16", stacklevel=2)
        self._rules(epoch, loss, accuracy, update, token_before)
        return entry

    def _rules(self, epoch, loss, accuracy, update, token_before) -> None:
        c = self.cfg
        if not math.isfinite(loss) or (update["skipped"] and not self.scaler.is_enabled()):
            # Counted; stops the run after max_nonfinite in a row (not an original rule). An fp16
            # overflow with a finite loss is the scaler's business: step skipped, scale halved.
            self.bad_in_row += 1
            warnings.warn(f"{self.label} epoch {epoch}: non-finite loss or gradient", stacklevel=3)
        else:
            self.bad_in_row = 0
        # The original's rules, in its order, after the step: a loss above twice the best (an infinite
        # one too) re-seeds the noises ("training collapse"); a new best keeps the token AFTER this step
        # (the original saves its pipeline there; keep="best_epoch": the token that produced the loss);
        # otherwise the counter drops.
        if c.reseed_on_collapse and (loss > 2 * self.best_loss or loss == math.inf):
            self.noise_seed += 1
        if loss < self.best_loss:
            self.kept = self.token.detach().clone() if c.keep == "after_step" else token_before
            self.best_loss, self.kept_epoch, self.since_best = loss, epoch, 0
        else:
            self.since_best += 1
        if accuracy > c.accuracy_stop:
            if c.accuracy_stop_keeps == "reaching":  # the token known to draw the class (docs/differences.md)
                self.kept, self.kept_epoch = token_before, epoch
            self.stop = f"accuracy {accuracy:.2f} > {c.accuracy_stop}"
        elif self.bad_in_row >= c.max_nonfinite:
            self.stop = (
                f"{self.bad_in_row} non-finite updates in a row (try --mixed_precision no or bf16, or lower --lr)"
            )
        elif self.since_best > c.early_stopping:  # the original stops when its counter drops below zero
            self.stop = f"no loss improvement for {self.since_best} epochs"

    def summary(self) -> dict:
        s = dict(seed=self.seed, epochs=len(self.log), best_epoch=self.kept_epoch, best_loss=self.best_loss)
        s |= dict(stop=self.stop or "num_train_epochs", kept_token=self._kept_description())
        s |= dict(noise_seeds=sorted({e["noise_seed"] for e in self.log}))
        s |= dict(nonfinite_skipped=sum(e["skipped"] for e in self.log))
        s |= dict(zero_grad_epochs=sum(e["zero_grad"] for e in self.log))
        if self.cfg.clip_before_backward:
            s["last_image_regime_epochs"] = sum(e["last_image_regime"] == "last image alone" for e in self.log)
        return s | dict(seconds=round(time.time() - self.start, 2))

    def _kept_description(self) -> str:
        if self.kept_epoch is None:
            return "the initializer's embedding (no better epoch)"
        if (self.stop or "").startswith("accuracy") and self.cfg.accuracy_stop_keeps == "reaching":
            return f"the token that produced epoch {self.kept_epoch} (accuracy stop)"
        if self.cfg.keep == "best_epoch":
            return f"the token that produced epoch {self.kept_epoch} (lowest epoch loss)"
        return f"the token after epoch {self.kept_epoch}'s update (lowest epoch loss)"


def train_runs(cfg, sd, clf, runs: list[Run], labels: list[str], on_epoch=None, desc: str = "train") -> None:
    """Train `runs` together, one optimizer step per run per epoch, until each stops. `on_epoch(run,
    entry, images)`, if given, is called after each run's epoch; returning True stops that run."""
    for k, run in enumerate(runs):
        run.slot = k
    vocabulary = _vocabulary_snapshot(sd, cfg)
    bar = tqdm(total=cfg.num_train_epochs, desc=desc, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(cfg.num_train_epochs):
            live = [r for r in runs if r.stop is None]
            if not live:
                break
            results = epoch_step(cfg, sd, clf, live, epoch, labels)
            for run, (loss, preds, images) in zip(live, results):
                entry = run.finish_epoch(epoch, loss, preds)
                _decay_vocabulary(sd, cfg, run, entry)
                if on_epoch is not None and on_epoch(run, run.log[-1], images) and run.stop is None:
                    run.stop = "stopped by the user"
            bar.update()
            bar.set_postfix(runs_left=sum(r.stop is None for r in runs), loss=f"{min(r[0] for r in results):.3f}")
    finally:
        bar.close()
        for run in runs:  # the training curve beside each run's log
            if run.log:
                save_image(run.log_path.with_name("train_curve.png"), training_curve(run.log, f"{run.label}: training"))
        for k in range(len(runs)):
            set_token(sd, sd.init_embedding, k)  # the slots are free again
        if vocabulary is not None:
            sd.text_encoder.get_input_embeddings().weight.data.copy_(vocabulary)


def epoch_step(cfg, sd, clf, runs: list[Run], epoch: int, labels: list[str]) -> list[tuple]:
    """One epoch of every live run (`epoch_pass`). With an automatic batch size, running out of memory
    halves the images per forward for the rest of training and redoes the epoch from zeroed gradients:
    the same gradient, accumulated in smaller pieces (the memory model is SD 1.4's; other models differ).
    Nothing of a failed pass is kept: the optimizer, scaler and log change only after a whole epoch."""
    while True:
        per_forward = forward_size(cfg, sd, len(runs))
        try:
            return epoch_pass(cfg, sd, clf, runs, epoch, labels, per_forward)
        except torch.cuda.OutOfMemoryError:
            # The original's clip sequence and prompt padding depend on the split: no silent change there.
            if cfg.batch_size or cfg.clip_before_backward or cfg.pad_to_longest or per_forward == 1:
                raise
        sd.forward_limit = halved_after_out_of_memory(
            sd, per_forward, f"out of memory at {per_forward} images per forward"
        )


def forward_size(cfg, sd, runs: int = 1) -> int:
    """The images per training forward that `epoch_step` uses now."""
    return micro_batch_size(cfg, sd.device, runs, sd.forward_limit)


def epoch_pass(cfg, sd, clf, runs: list[Run], epoch: int, labels: list[str], per_forward: int) -> list[tuple]:
    """Image j of every run shares micro-step j's forward (so batch 1 per run with accumulation is
    exactly the original's micro-step order); each image's loss is weighted by its run's loss scale /
    epoch_size, so each token's gradient is that of its epoch's mean loss."""
    inputs = [run.epoch_inputs(sd, epoch) for run in runs]
    for run in runs:
        run.opt.zero_grad(set_to_none=True)
        run.clips, run.before_last = [], None
        sd.values[run.slot] = run.token
    items = [(k, j) for j in range(cfg.epoch_size) for k in range(len(runs))]
    # Each run's loss weight; its scale changes only in finish_epoch, so one read (a host sync) per epoch.
    weights = [_scale(run.scaler, sd.device) / cfg.epoch_size for run in runs]
    losses, preds, images = ([[None] * cfg.epoch_size for _ in runs] for _ in range(3))
    for s in range(0, len(items), per_forward):
        chunk = items[s : s + per_forward]
        if cfg.clip_before_backward:
            for k in sorted({k for k, _ in chunk}):
                runs[k].clip_before_backward()
        prompts = [inputs[k][0][j] for k, j in chunk]
        noise = torch.cat([inputs[k][1][j : j + 1] for k, j in chunk])
        targets = [runs[k].target for k, _ in chunk]
        weight = torch.tensor([weights[k] for k, _ in chunk], device=sd.device)
        loss, pred, batch = train_step(sd, clf, prompts, noise, targets, cfg)
        (loss * weight.to(loss.dtype)).sum().backward()
        for (k, j), value, p, im in zip(chunk, loss.tolist(), pred.tolist(), batch.cpu()):
            losses[k][j], preds[k][j], images[k][j] = value, p, im
    for k, run in enumerate(runs):  # written once the whole epoch has run (a pass can fail: epoch_step)
        sd.values[run.slot] = run.token.detach()
        for j, (p, im) in enumerate(zip(preds[k], images[k])):
            save_image(run.img_dir / f"e{epoch:03d}_{j:02d}_{p}_{labels[p]}.png", im, compress_level=1)
    return [(sum(lo) / cfg.epoch_size, pr, torch.stack(im)) for lo, pr, im in zip(losses, preds, images)]


def _scale(scaler, device) -> float:
    """The loss scale (a GradScaler takes its device from its first `scale` call)."""
    return scaler.scale(torch.ones((), device=device)).item() if scaler.is_enabled() else 1.0


def _vocabulary_snapshot(sd, cfg):
    """With `decay_vocabulary` (the original's AdamW over the whole embedding matrix), the vocabulary is
    decayed during training and restored afterwards."""
    return sd.text_encoder.get_input_embeddings().weight.detach().clone() if cfg.decay_vocabulary else None


def _decay_vocabulary(sd, cfg, run: Run, entry: dict) -> None:
    """AdamW over the whole matrix with the other rows' gradients zeroed (docs/original.md §7.2): their Adam
    moments stay zero, so each taken step changes them only by the decoupled weight decay."""
    if cfg.decay_vocabulary and not entry["skipped"]:  # a step was taken
        with torch.no_grad():
            weight = sd.text_encoder.get_input_embeddings().weight
            others = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
            others[sd.slot_ids] = False
            weight[others] *= 1 - cfg.lr * cfg.weight_decay


def new_run(cfg, sd, target: int, name: str, *, log_path: Path, img_dir: Path, seed: int, label: str = "") -> Run:
    return Run(cfg, target, name, seed, Path(log_path), Path(img_dir), sd.init_embedding, make_scaler(sd, cfg), label)
