"""Speed benchmark: the original schedule against the project's, on random-weight models.

python tools/bench.py             # GPU: SD 1.4-shaped UNet / VAE / CLIP text encoder + ViT-L/16 (docs/performance.md),
                            # then SDXL-Turbo, FLUX.1-schnell, SDXL and FLUX.1-dev at their real sizes
python tools/bench.py --compile   # also torch.compile(unet) variants (minutes of compilation)
python tools/bench.py --tiny      # the same code on tiny shapes, on a CPU, in seconds
python tools/bench.py --out docs/ # publish: the tables docs/performance.md cites
python tools/bench.py --families none            # the SD 1.4 cases only
python tools/bench.py --families_only --families sdxl,flux-dev   # only these families, added to --out's results
python tools/bench.py --digits    # class batching in the digits world: 10 classes one at a time vs together (CPU)

Cost does not depend on the weights, so nothing is downloaded: the components are built from
configs, saved as a diffusers folder and loaded through the project's `diffusion.load_sd`; training is
timed as run.py trains, one epoch through `workspace.train_batch`, generation through `diffusion.generate`.
Each case reports the median over `--repeats` timed runs after `--warmup` runs, with device
synchronisation, in seconds per image, and the peak of torch.cuda.max_memory_allocated (null on a CPU).
The class-batch cases time one epoch of 1, 2, 4, 8 classes trained together and project the cost of 1000
classes. Then the numerics check: the token's gradient in fp16 against fp32 (fp16 on a CPU too), computed
by `train.epoch_pass` as the training loop computes it. The classifier stays in fp32 throughout, as in
training.

The newer pipelines (`--families`, model_zoo.py's real sizes, built on the GPU and handed to load_sd
in memory) run last, at 512 and 1024 px, batch 1 and 4, with and without checkpointing, in their presets'
steps, guidance and precision (config.FAMILY_PRESETS): seconds per training image (one epoch of the gradient
part timed through train_batch, the earlier no-grad steps added from one timed step) and peak memory; a
case that runs out of GPU memory is recorded as such. No family case starts after `--budget_s` seconds of
the whole run.

Writes benchmarks.json and benchmarks.md to `--out` (out/bench/ by default, out/bench_tiny/ with --tiny,
out/bench_digits/ with --digits; never docs/ unless asked).
"""

import argparse
import functools
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/bench.py` from anywhere

from classifiers import PRESETS, Classifier, Preprocess  # noqa: E402
from config import FAMILY_PRESETS, RunConfig  # noqa: E402
from diffusion import configure, denoise, encode, generate, initial_noise, load_sd, unconditional  # noqa: E402
from prompt_datasets import EVAL_TEMPLATE, TEMPLATES, PromptDataset, class_prompt  # noqa: E402
from train import CPU_FORWARD, epoch_pass, micro_batch_size, new_run  # noqa: E402
from workspace import ClassPaths, device_and_dtype, quiet_libraries, train_batch  # noqa: E402

CLASS_NAME, TARGET = "tiger cat", 282  # docs/original.md §2's example class (ImageNet index 282)
SHAPES = {
    "sd14": dict(  # docs/performance.md "SD 1.4 shapes"; run settings: RunConfig defaults (512 px, 30 / 50 steps)
        unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        vit=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
        vit_px=dict(image_size=224, patch_size=16),
        prep=PRESETS["inet"][1],
        cfg={},
    ),
    "tiny": dict(  # tests/conftest.py's tiny models; the schedule is the same, only the steps are fewer
        unet=dict(
            sample_size=8,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=8,
        ),
        vae=dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16),
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vit=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        vit_px=dict(image_size=16, patch_size=4),
        prep=Preprocess(16, (16, 16), (0.5,) * 3, (0.5,) * 3),
        cfg=dict(height=16, width=16, num_of_SD_inference_steps=3, eval_steps=3),
    ),
}
# Cases: RunConfig overrides (+ channels_last). "original" is the paper's schedule (docs/original.md §2):
# batch 1 with accumulation over the epoch of 5, and batch-1 evaluation; the other rows are the project.
TRAIN_CASES = {
    "original": dict(batch_size=1),
    "disco": {},
    "disco_no_ckpt": dict(gradient_checkpointing=False),
    "disco_bf16": dict(mixed_precision="bf16"),
    "disco_channels_last": dict(channels_last=True),
}
GENERATE_CASES = {"original": dict(eval_batch_size=1), "disco": {}, "disco_channels_last": dict(channels_last=True)}
COMPILE_CASE = dict(compile=True)  # --compile: run.py's --compile, torch.compile of the UNet in place
# Class batching (--class_batch R): R classes of epoch_size 5 trained together, combined batch 5 R; one epoch
# of workspace.train_batch each. "original": one class with micro-batches of 1, the paper's schedule.
CLASS_BATCH_RUNS = (1, 2, 4, 8)
CLASS_BATCH_CASES = {"original": (1, dict(batch_size=1))} | {
    f"runs{r}{suffix}": (r, dict(gradient_checkpointing=ckpt))
    for suffix, ckpt in (("", True), ("_no_ckpt", False))
    for r in CLASS_BATCH_RUNS
}
IMAGENET_CLASSES = 1000


def build_pipeline(shape: dict, folder: Path) -> None:
    """Random-weight SD components from `shape`, saved as a diffusers folder (the SD 1.4 layout)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from digits.tokenizer import build_vocab, clip_tokenizer

    torch.manual_seed(0)
    # A CLIP-style BPE tokenizer in which the prompt words are single tokens, padded with unreachable
    # entries to CLIP's 49408 so the embedding matrix has the real size after load_sd's resize.
    vocab, merges = build_vocab([*TEMPLATES, "a", CLASS_NAME])
    vocab |= {f"<unused{i}>": i for i in range(len(vocab), 49408)}
    tok = clip_tokenizer(vocab, merges, model_max_length=77)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    text = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", **ids, **shape["text"])
    )
    blocks = len(shape["vae"]["block_out_channels"])
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4,
        scaling_factor=0.18215,
        **shape["vae"],
    )
    sched = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    parts = dict(vae=vae, text_encoder=text, tokenizer=tok, unet=UNet2DConditionModel(**shape["unet"]))
    pipe = StableDiffusionPipeline(
        **parts, scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder)


def build_classifier(shape: dict) -> Classifier:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)  # its own weights, whatever drew from the generator before (load_sd's slots do)
    vit = ViTForImageClassification(ViTConfig(num_labels=1000, **shape["vit"], **shape["vit_px"]))
    return Classifier(vit, shape["prep"], [f"class {i}" for i in range(1000)], "cls", "random ViT")


def make_cfg(shape: dict, folder: Path, device: str, **overrides) -> RunConfig:
    """The run's settings: RunConfig's defaults (the paper's) at `shape`'s size; files go next to `folder`.
    The learned check after training is generation on the selection seeds (the generate rows time that)."""
    kw = dict(sd_model=str(folder), classifier="inet", device=device, output_path=str(folder.parent), **shape["cfg"])
    kw["check_learned"] = False
    return RunConfig(**kw | overrides).finalize()


def device_dtype(cfg: RunConfig) -> tuple[torch.device, torch.dtype]:
    """workspace.device_and_dtype, with `--device auto` resolved as run.py resolves it: through
    accelerate's PartialState (this process's GPU, else the CPU)."""
    state = None
    if cfg.device == "auto":
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
    return device_and_dtype(cfg, state)


def configure_bench(sd, clf, cfg: RunConfig, channels_last: bool = False) -> None:
    """Put the loaded models into `cfg`'s settings as run.py does (UNet and VAE in the run's dtype, then
    diffusion.configure). The classifier stays in fp32, fed fp32 images, as workspace.load_diffusion
    leaves it (docs/original.md §3)."""
    _, dtype = device_dtype(cfg)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (sd.unet, sd.vae):
        if m.dtype != dtype:  # (diffusers warns at every cast)
            m.to(dtype=dtype)
        m.to(memory_format=fmt)
    clf.float()
    sd.dtype = dtype
    # compile is in place: there is no undoing it, so the compiled cases run last
    configure(sd, cfg.gradient_checkpointing, cfg.compile)


def measure(fn, images: int, device: torch.device, repeats: int, warmup: int) -> dict:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times[warmup:])
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None
    warm = [round(t, 3) for t in times[:warmup]]
    return dict(s_per_image=median / images, peak_gib=peak, images=images, median_s=median, warmup_s=warm)


def time_epoch(sd, clf, cfg: RunConfig, **kw) -> tuple[dict, dict]:
    """One epoch as run.py trains it: each timed run is a whole workspace.train_batch call of `cfg.class_batch`
    classes (TARGET, TARGET + 1, ...; run k in slot k) for one epoch: the class folders cleared, config.json,
    forwards and backwards, optimizer steps, training PNGs, logs, curves, tokens, train_summary.json.
    Returns the measurement and the first class's summary of the last call."""
    cfg = replace(cfg, num_train_epochs=1)
    jobs = [(TARGET + k, CLASS_NAME, ClassPaths.of(cfg, TARGET + k, CLASS_NAME)) for k in range(cfg.class_batch)]
    sd.forward_limit = 0  # each row finds its own fit (train.epoch_step halves it after an out-of-memory error)
    summaries = []

    def epoch():
        summaries.append(train_batch(cfg, sd, clf, jobs))

    return measure(epoch, len(jobs) * cfg.epoch_size, sd.device, **kw), summaries[-1][0]


def bench_train(sd, clf, cfg: RunConfig, **kw) -> dict:
    """One epoch of one class (`time_epoch`); `micro_batch_size`: the images per forward it trained with."""
    res, summary = time_epoch(sd, clf, cfg, **kw)
    steps = cfg.num_of_SD_inference_steps
    return dict(res, micro_batch_size=summary["micro_batch_size"], steps=steps, dtype=str(sd.dtype))


def bench_generate(sd, cfg: RunConfig, **kw) -> dict:
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.test_size))
    prompt = class_prompt(EVAL_TEMPLATE, cfg.placeholder_token, CLASS_NAME)

    def run():
        generate(sd, prompt, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)

    res = measure(run, len(seeds), sd.device, **kw)
    return dict(res, batch_size=cfg.eval_batch_size, steps=cfg.eval_steps, dtype=str(sd.dtype))


def bench_class_batch(sd, clf, cfg: RunConfig, **kw) -> dict:
    """One epoch of `cfg.class_batch` classes trained together (`time_epoch`): image j of every run in one
    forward, micro-batches of train.micro_batch_size."""
    res, summary = time_epoch(sd, clf, cfg, **kw)
    return dict(
        res,
        runs=cfg.class_batch,
        combined_batch=cfg.class_batch * cfg.epoch_size,
        micro_batch_size=summary["micro_batch_size"],
        gradient_checkpointing=cfg.gradient_checkpointing,
        steps=cfg.num_of_SD_inference_steps,
        dtype=str(sd.dtype),
    )


def projection(cases: dict, epochs: int, epoch_size: int = 5, classes: int = IMAGENET_CLASSES) -> dict:
    """The training cost of `classes` classes at `epochs` epochs of `epoch_size` images each, in hours of
    this device: the original's schedule (one class at a time, micro-batches of 1), one class at a time
    at the project's micro-batch (the faster of the 1-run cases), and class batching at the fastest
    measured combined batch."""
    images = classes * epochs * epoch_size

    def cost(name: str) -> dict:
        r = cases[name]
        return dict(
            case=name,
            combined_batch=r["combined_batch"],
            s_per_image=r["s_per_image"],
            hours=images * r["s_per_image"] / 3600,
        )

    batched = [n for n in cases if n != "original"]
    one = min((n for n in batched if cases[n]["runs"] == 1), key=lambda n: cases[n]["s_per_image"])
    best = min(batched, key=lambda n: cases[n]["s_per_image"])
    out = dict(classes=classes, epochs_per_class=epochs, epoch_size=epoch_size, images=images)
    out |= dict(original=cost("original"), one_class_at_a_time=cost(one), class_batching=cost(best))
    out["speedup_vs_original"] = out["original"]["hours"] / out["class_batching"]["hours"]
    out["speedup_vs_one_class"] = out["one_class_at_a_time"]["hours"] / out["class_batching"]["hours"]
    return out


def token_gradient(sd, clf, cfg: RunConfig, noise_seed: int, dtype: torch.dtype, folder: Path):
    """The token's gradient for one image (the run's first prompt, the noise of `noise_seed`) with UNet and VAE
    in `dtype` (the classifier in fp32, as training runs it), unscaled, and the loss scale it was computed at:
    train.epoch_pass, the training loop's own pass, on a one-image run at the token now in slot 0. fp16 goes
    through the run's GradScaler (train.make_scaler) as in training; after an overflow the scale is halved
    and the gradient recomputed, as the dynamic scaler does over the first epochs."""
    for m in (sd.unet, sd.vae):
        m.to(dtype=dtype)
    clf.float()
    sd.dtype = dtype
    one = replace(cfg, epoch_size=1)
    for _ in range(32):
        run = new_run(
            one, sd, TARGET, CLASS_NAME, log_path=folder / "train_log.jsonl", img_dir=folder / "train", seed=cfg.seed
        )
        run.noise_seed = noise_seed  # the same prompt, this noise
        with torch.no_grad():
            run.token.copy_(sd.token)  # the token the train cases left, not the initializer's
        epoch_pass(one, sd, clf, [run], 0, clf.labels, 1)
        if not run.scaler.is_enabled() or torch.isfinite(run.token.grad).all():
            break
        one = replace(one, loss_scale=one.loss_scale / 2)
    scale = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
    return run.token.grad.double() / scale, scale


def gradient_precision(sd, clf, cfg: RunConfig, half: torch.dtype) -> dict:
    """The numerics check: the token's gradient for one image (same noise and prompt) with UNet and
    VAE in `half` (the classifier in fp32, fed fp32 images, as in training) against all-fp32, on
    whatever device the models are on (fp16 on a CPU too). Passes at cosine >= 0.95 and a norm ratio
    in 0.8-1.25. The control: the fp32 gradient for another noise (seed + 1), whose cosine
    with the first says how far apart two different gradients are."""
    folder = Path(cfg.output_path) / "gradient_check"
    full, _ = token_gradient(sd, clf, cfg, cfg.seed, torch.float32, folder)
    control, _ = token_gradient(sd, clf, cfg, cfg.seed + 1, torch.float32, folder)
    low, scale = token_gradient(sd, clf, cfg, cfg.seed, half, folder)

    def cos(a, b):
        return torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    cosine, ratio = cos(full, low), (low.norm() / full.norm()).item()
    return dict(
        dtype=str(half),
        cosine=cosine,
        norm_ratio=ratio,
        rel_diff=((low - full).norm() / full.norm()).item(),
        fp32_norm=full.norm().item(),
        loss_scale=scale,
        control_cosine=cos(full, control),
        ok=cosine >= 0.95 and 0.8 <= ratio <= 1.25,
    )


# ---------------------------------------------------------------- the newer pipelines (model_zoo.py's shapes)
# config.FAMILY_PRESETS names, cheapest first: what --budget_s leaves out comes last
FAMILY_BENCH = ("sdxl-turbo", "flux-schnell", "sdxl", "flux-dev")
FAMILY_SIZES = {"sd14": (512, 1024), "tiny": (16, 32)}  # image sides in px (the tiny run: model_zoo's tiny models)
FAMILY_BATCHES = (1, 4)  # images per forward: the least memory a run needs, and the slope per image
IMAGES_PER_CLASS = RunConfig.num_train_epochs * RunConfig.epoch_size  # at most 50 epochs of 5 images


def family_cfg(variant: str, folder: Path, device: str, px: int, batch: int, ckpt: bool) -> RunConfig:
    """The variant's preset (steps, guidance, precision: config.FAMILY_PRESETS) at `px`, one epoch of `batch`
    images in one forward, gradient through the last step (RunConfig's grad_steps 1)."""
    preset = {k: v for k, v in FAMILY_PRESETS[variant].items() if k != "sd_model"}
    kw = dict(sd_model=str(folder), classifier="inet", device=device, output_path=str(folder.parent))
    kw |= preset | dict(
        height=px, width=px, epoch_size=batch, batch_size=batch, gradient_checkpointing=ckpt, check_learned=False
    )
    return RunConfig(**kw).finalize()


def load_family(variant: str, shape_name: str, cfg: RunConfig):
    """model_zoo's random-weight `variant`, built on the device (the denoiser in the run's dtype) and put
    through diffusion.load_sd as a loaded model would be; nothing is written (FLUX.1's weights are 43 GB)."""
    from tools import model_zoo

    device, dtype = device_dtype(cfg)
    shape = "tiny" if shape_name == "tiny" else "real"
    pipe = model_zoo.pipeline(variant, [CLASS_NAME], shape=shape, device=device, dtype=dtype)
    return load_sd(
        pipe,
        device,
        dtype,
        size=(cfg.height, cfg.width),
        placeholder=cfg.placeholder_token,
        initializer=cfg.initializer_token,
        train_encoders=cfg.train_encoders,
    )


def weights(sd) -> dict:
    """Parameters and GiB of each model as the run holds it (text encoders fp32, denoiser in the run's dtype,
    VAE as diffusion._place leaves it)."""
    models = {n: m for n, m in sd.pipe.components.items() if isinstance(m, torch.nn.Module)}
    return {
        n: dict(
            parameters=sum(p.numel() for p in m.parameters()),
            gib=round(sum(p.numel() * p.element_size() for p in m.parameters()) / 2**30, 2),
            dtype=str(next(m.parameters()).dtype),
        )
        for n, m in models.items()
    }


def guarded(fn) -> dict:
    """fn()'s measurement, or {"oom": True} when the GPU runs out of memory: a case that does not fit is a
    result, not the end of the benchmark."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        pass  # leaving the handler drops the traceback, and with it the failed case's tensors
    free_memory()
    return dict(oom=True)


def free_memory() -> None:
    """What Python still holds of the last models or a failed case (reference cycles included), and the
    allocator's cache, released before the next models are built."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def step_ends(scheduler, sync):
    """The time at each sampler step's end, after a device sync: the scheduler's own `step`, wrapped while
    the block runs (the sampler loop itself has no hook)."""
    step, ends = scheduler.step, []

    def timed(*args, **kwargs):
        out = step(*args, **kwargs)
        sync()
        ends.append(time.perf_counter())
        return out

    scheduler.step = timed
    try:
        yield ends
    finally:
        del scheduler.step  # the class's method again


def bench_nograd_step(sd, cfg: RunConfig, **kw) -> dict:
    """One sampler step without gradient on `cfg.epoch_size` images (the denoiser, classifier-free guided
    where the preset guides, and the scheduler's step), as every step before the gradient steps runs: the
    time between the first and the last step's end (`step_ends`) in a 3-step no-grad diffusion.denoise,
    over 2 steps, so that the once-per-call work (timesteps, prompt concatenation) is not counted per step.
    `median_s`: the median of the timed runs."""
    prompts = PromptDataset(cfg.placeholder_token, CLASS_NAME, cfg.number_of_prompts, cfg.epoch_size).epoch(cfg.seed, 0)
    noise = initial_noise(sd, n=cfg.epoch_size, seed=cfg.seed)
    sync = torch.cuda.synchronize if sd.device.type == "cuda" else (lambda: None)
    per_step = []
    with torch.no_grad():
        cond, uncond = encode(sd, prompts), unconditional(sd)
        uncond = None if uncond is None else uncond.expand(len(prompts))

        def loop():
            with step_ends(sd.scheduler, sync) as ends:
                denoise(sd, noise, cond, uncond, 3, cfg.guidance_scale)
            per_step.append((ends[-1] - ends[0]) / (len(ends) - 1))

        res = measure(loop, cfg.epoch_size, sd.device, **kw)
    return res | dict(median_s=statistics.median(per_step[kw["warmup"] :]))


def family_case(grad: dict, step: dict | None, cfg: RunConfig) -> dict:
    """A case's numbers. Only the gradient steps are timed in a training epoch (`grad`: prompt encoding,
    the last `grad_steps` sampler steps with gradient, decoding, the classifier, backward); the steps before
    them add `steps - grad_steps` no-grad steps of `step` each: 30-step SDXL and FLUX.1-dev epochs would
    otherwise take most of the benchmark's budget."""
    steps, batch = cfg.num_of_SD_inference_steps, cfg.epoch_size
    out = dict(px=cfg.height, batch=batch, gradient_checkpointing=cfg.gradient_checkpointing, steps=steps)
    out |= dict(grad_steps=cfg.grad_steps, oom=bool(grad.get("oom") or (step or {}).get("oom")))
    if out["oom"]:
        return out | dict(s_per_image=None, s_per_class=None, peak_gib=None)
    step_s = 0.0 if step is None else step["median_s"]
    s_per_image = (grad["median_s"] + (steps - cfg.grad_steps) * step_s) / batch
    peaks = [r["peak_gib"] for r in (grad, step) if r is not None and r["peak_gib"] is not None]
    return out | dict(
        s_per_image=s_per_image,
        s_per_class=s_per_image * IMAGES_PER_CLASS,
        peak_gib=max(peaks, default=None),
        grad_part_s=grad["median_s"],
        nograd_step_s=None if step is None else step_s,
        warmup_s=grad["warmup_s"],
    )


def family_cases(shape_name: str) -> list[tuple[str, int, int, bool]]:
    """(name, px, batch, checkpointing) of each variant's cases, in the order they run."""
    return [
        (f"{px}px_batch{batch}" + ("" if ckpt else "_no_ckpt"), px, batch, ckpt)
        for px in FAMILY_SIZES[shape_name]
        for batch in FAMILY_BATCHES
        for ckpt in (True, False)
    ]


def bench_family(variant: str, shape_name: str, cfg_at, classifier, entry: dict, save, deadline, **kw) -> None:
    """Every case of one variant into `entry["cases"]` (`cfg_at(px, batch, ckpt)`: its RunConfig), `save(name)`
    after each. The models are built for the first case that runs (`classifier(device)` gives the
    classifier); models that do not fit make every case out of memory. Once `deadline` (time.monotonic) has
    passed, the cases left are recorded as skipped, so that the whole run keeps to --budget_s."""
    sd = clf = None
    no_grad_steps = {}  # (px, batch): the no-grad step, timed once (there is no checkpointing without gradient)
    for i, (name, px, batch, ckpt) in enumerate(family_cases(shape_name)):
        cfg, case = cfg_at(px, batch, ckpt), dict(px=px, batch=batch, gradient_checkpointing=ckpt)
        if time.monotonic() > deadline:
            entry["cases"][name] = case | dict(skipped="time budget")
            save(name)
            continue
        if sd is None:
            sd = guarded(lambda cfg=cfg: load_family(variant, shape_name, cfg))
            if not isinstance(sd, dict):
                clf = classifier(sd.device)
                entry |= dict(pipeline=type(sd.pipe).__name__, models=weights(sd), vae_dtype=str(sd.vae.dtype))
        if isinstance(sd, dict):  # {"oom": True}: the models alone do not fit
            entry["cases"][name] = case | dict(oom=True, s_per_image=None, s_per_class=None, peak_gib=None)
        else:
            entry["cases"][name] = family_run(sd, clf, cfg, no_grad_steps, check=i == 0, **kw)
        save(name)


def family_run(sd, clf, cfg: RunConfig, no_grad_steps: dict, check: bool, **kw) -> dict:
    """One case at `cfg`'s size, batch and checkpointing: its gradient part timed, its no-grad step from
    `no_grad_steps` (timed at the first case of each size and batch). `check`: also timed over all steps,
    which checks the extrapolation of `family_case`."""
    sd.height = sd.width = cfg.height  # one loaded model for every size: the loop reads the size at each call
    configure(sd, cfg.gradient_checkpointing)
    key = (cfg.height, cfg.epoch_size)
    if key not in no_grad_steps and cfg.num_of_SD_inference_steps > cfg.grad_steps:
        no_grad_steps[key] = guarded(lambda: bench_nograd_step(sd, cfg, **kw))
    grad_only = replace(cfg, num_of_SD_inference_steps=cfg.grad_steps)
    r = family_case(guarded(lambda: bench_train(sd, clf, grad_only, **kw)), no_grad_steps.get(key), cfg)
    if check and not r["oom"]:
        r["measured_s_per_image"] = guarded(lambda: bench_train(sd, clf, cfg, **kw)).get("s_per_image")
    return r


def bench_families(variants: list[str], shape_name: str, device: str, out: Path, result: dict, deadline, **kw):
    """The newer pipelines' cases into result["families"], one variant at a time (each freed before the
    next: FLUX.1 alone holds about 44 GB), benchmarks.json rewritten after every case."""
    # one classifier for every variant, fp32 as training keeps it
    classifier = functools.cache(lambda device: build_classifier(SHAPES[shape_name]).to(device))
    with tempfile.TemporaryDirectory(prefix="bench_families_") as tmp:
        for variant in variants:
            folder = Path(tmp) / variant  # model_index.json only
            folder.mkdir()
            cfg_at = functools.partial(family_cfg, variant, folder, device)
            cfg = cfg_at(FAMILY_SIZES[shape_name][0], 1, True)
            dev, dtype = device_dtype(cfg)
            if dev.type == "cuda":
                result["device"] = torch.cuda.get_device_name(dev)
            entry = result["families"][variant] = dict(steps=cfg.num_of_SD_inference_steps, dtype=str(dtype), cases={})

            def save(name: str, entry=entry, variant=variant) -> None:
                r = entry["cases"][name]
                if r.get("skipped") or r["oom"]:
                    what = f"skipped ({r['skipped']})" if r.get("skipped") else "out of memory"
                else:
                    what = f"{r['s_per_image']:.4g} s/image  peak {r['peak_gib']} GiB"
                print(f"{variant:12} {name:22} {what}", flush=True)
                (out / "benchmarks.json").write_text(json.dumps(result, indent=2) + "\n")

            bench_family(variant, shape_name, cfg_at, classifier, entry, save, deadline, **kw)
            free_memory()  # the variant's models, before the next one is built


# ---------------------------------------------------------------- --digits: class batching in the digits world
TOKEN_TOLERANCE = 1e-4  # max abs difference of a final token trained both ways (fp32; observed about 1e-6)


def digits_cfg(out: Path, epochs: int, device: str, runs: int) -> RunConfig:
    """The digits preset for exactly `epochs` epochs: accuracy_stop 1.0 is never exceeded and early_stopping
    is beyond reach, so no run stops early and both schedules do the same work. `runs`: the class batch.
    No snapshots (select_every 0) and no learned check: both are generation on the selection seeds, not training."""
    from config import parse_args

    argv = ["--preset", "digits", "--device", device, "--output_path", str(out), "--num_train_epochs", str(epochs)]
    argv += [
        "--accuracy_stop",
        "1.0",
        "--early_stopping",
        str(10**6),
        "--select_every",
        "0",
        "--check_learned",
        "False",
        "--candidates",  # one run per class: class batching is timed, not the preset's retries
        "1",
    ]
    return parse_args([*argv, "--class_batch", str(runs)])


def forward_sizes(cfg: RunConfig, device: torch.device, runs: int) -> list[int]:
    """The images of each forward of one epoch of `runs` runs trained together (train.epoch_step)."""
    per, total = micro_batch_size(cfg, device, runs), runs * cfg.epoch_size
    return [min(per, total - s) for s in range(0, total, per)]


def warm_up(cfg: RunConfig, sd, clf, folder: Path) -> None:
    """An untimed 2-image pass (train.epoch_pass on a throwaway run): the first forward pays one-off costs."""
    two = replace(cfg, epoch_size=2)
    run = new_run(two, sd, 0, clf.labels[0], log_path=folder / "train_log.jsonl", img_dir=folder / "train", seed=0)
    epoch_pass(two, sd, clf, [run], 0, clf.labels, 2)


def train_groups(cfg: RunConfig, sd, clf, groups: list[list[int]]) -> tuple[float, list]:
    """One workspace.train_batch call per group of classes (0-based, named by the classifier's labels), each
    run with the preset's seed, files under `cfg.output_path`, as run.py trains them; the wall time of all
    calls and the runs in class order (train_batch's on_epoch hands each over)."""
    sync = torch.cuda.synchronize if sd.device.type == "cuda" else (lambda: None)
    runs = {}

    def seen(run, _entry, _images) -> bool:
        runs[run.label] = run
        return False  # never stops a run

    sync()
    t0 = time.perf_counter()
    for group in groups:
        jobs = [(c, clf.labels[c], ClassPaths.of(cfg, c, clf.labels[c])) for c in group]
        train_batch(cfg, sd, clf, jobs, on_epoch=seen)
    sync()
    return time.perf_counter() - t0, list(runs.values())


def compare_runs(apart: list, together: list) -> dict:
    """Per class: the final tokens' (and kept tokens') max abs difference, the epoch losses' largest
    relative difference and whether every epoch's predictions agree."""
    per_class = []
    for a, b in zip(apart, together):
        losses = [abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-12) for x, y in zip(a.log, b.log)]
        per_class.append(
            dict(
                index=a.target,
                name=a.name,
                epochs=[len(a.log), len(b.log)],
                token_max_abs_diff=(a.token.detach() - b.token.detach()).abs().max().item(),
                kept_max_abs_diff=(a.kept - b.kept).abs().max().item(),
                loss_max_rel_diff=max(losses, default=0.0),
                same_predictions=[x["predictions"] for x in a.log] == [y["predictions"] for y in b.log],
            )
        )
    worst = max(r["token_max_abs_diff"] for r in per_class)
    return dict(per_class=per_class, max_abs_diff=worst, tolerance=TOKEN_TOLERANCE, same=worst < TOKEN_TOLERANCE)


def bench_digits(classes: int, epochs: int, device: str, warmup: int) -> dict:
    """The digits world's first `classes` classes, `epochs` epochs each: (a) one class at a time (one
    train_batch call per class, the model loaded with 1 slot) and (b) all in one class batch (one call,
    `classes` slots); wall time and training images per second of both, and the final tokens compared.
    Training images, logs and tokens go to a temporary folder. `warmup`: an untimed 2-image pass on each
    model first (`warm_up`)."""
    from classifiers import load_classifier
    from workspace import load_diffusion

    with tempfile.TemporaryDirectory(prefix="bench_digits_") as tmp:
        tmp = Path(tmp)
        one = digits_cfg(tmp / "one_at_a_time", epochs, device, 1)
        batch = digits_cfg(tmp / "class_batch", epochs, device, classes)
        dev, dtype = device_dtype(one)
        clf = load_classifier(one.classifier, one.classifier_pooling)
        if classes > len(clf.labels):
            raise SystemExit(f"bench.py: --classes {classes}: the digits classifier has {len(clf.labels)} classes")
        sd_one = load_diffusion(one, {"classifier": clf}, dev, dtype)  # run.py's loading: 1 slot
        sd_batch = load_diffusion(batch, {"classifier": clf}, dev, dtype)  # one slot per run
        for sd in (sd_one, sd_batch) if warmup else ():
            warm_up(one, sd, clf, tmp / "warmup")
        wanted = list(range(classes))
        wall_one, apart = train_groups(one, sd_one, clf, [[c] for c in wanted])
        wall_batch, together = train_groups(batch, sd_batch, clf, [wanted])
    images = classes * epochs * one.epoch_size

    def side(calls: int, runs: int, wall: float, cfg: RunConfig) -> dict:
        sizes = forward_sizes(cfg, dev, runs)
        return dict(
            train_batch_calls=calls,
            runs_per_call=runs,
            forward_sizes=sizes,
            images=images,
            wall_s=wall,
            images_per_s=images / wall,
        )

    result = dict(
        bench="digits class batching",
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        classes=[dict(index=c, name=clf.labels[c]) for c in wanted],
        epochs=epochs,
        epoch_size=one.epoch_size,
        steps=one.num_of_SD_inference_steps,
        grad_steps=one.grad_steps,
        size=[one.height, one.width],
        dtype=str(dtype),
        cpu_forward=CPU_FORWARD,
        one_at_a_time=side(classes, 1, wall_one, one),
        class_batch=side(1, classes, wall_batch, batch),
    )
    result["speedup"] = result["class_batch"]["images_per_s"] / result["one_at_a_time"]["images_per_s"]
    result["tokens"] = compare_runs(apart, together)
    return result


def digits_markdown(r: dict) -> str:
    a, b, t = r["one_at_a_time"], r["class_batch"], r["tokens"]
    n = len(r["classes"])
    lines = [
        "# Class batching in the digits world\n",
        f"{r['device']}, torch {r['torch']}, {r['threads']} threads; {n} classes x {r['epochs']} epochs x "
        f"{r['epoch_size']} images ({r['size'][0]} px, {r['steps']} steps, gradient through {r['grad_steps']}), "
        f"{r['dtype'].removeprefix('torch.')}. Written by `bench.py --digits`.\n",
        "| schedule | train_batch calls | runs per call | images per forward | images | wall s | images / s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for what, s in (("one class at a time", a), ("one class batch", b)):
        sizes = ", ".join(map(str, s["forward_sizes"]))
        row = [what, s["train_batch_calls"], s["runs_per_call"], sizes, s["images"], f"{s['wall_s']:.1f}"]
        lines.append("| " + " | ".join(map(str, row)) + f" | {s['images_per_s']:.2f} |")
    lines.append(f"\nClass batch / one class at a time: {r['speedup']:.2f}x the images per second.\n")
    verdict = "the same" if t["same"] else "DIFFERENT"
    diffs = ", ".join(f"{c['index']} {c['token_max_abs_diff']:.1e}" for c in t["per_class"])
    lines.append(
        f"Final tokens, class batch vs one at a time: {verdict} (largest max abs difference {t['max_abs_diff']:.1e}, "
        f"tolerance {t['tolerance']:g}); per class: {diffs}."
    )
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    lines = [
        f"# Benchmarks ({result['shape']} shapes, random weights)\n",
        f"{result['device']}, torch {result['torch']}, diffusers {result['diffusers']}; "
        f"median of {result['repeats']} runs after {result['warmup']} warm-up runs. "
        f"Written by `{result['command']}`.\n",
    ]
    if result.get("train"):  # absent with --families_only
        lines += ["| what | case | batch | dtype | s / image | peak GiB | speed-up vs original |"]
        lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
    for what in [w for w in ("train", "generate") if result.get(w)]:
        base = result[what]["original"]["s_per_image"]
        for case, r in result[what].items():
            batch = r.get("micro_batch_size", r.get("batch_size"))
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
            row = [what, case, batch, r["dtype"].removeprefix("torch."), f"{r['s_per_image']:.4g}", peak]
            lines.append("| " + " | ".join(map(str, row)) + f" | {base / r['s_per_image']:.2f}x |")
    cb = result.get("class_batch")
    if cb:
        lines += [
            "\nClass batching (`workspace.train_batch`: classes of epoch_size 5 trained together for one epoch, "
            "as run.py --class_batch trains them):\n",
            "| case | runs | combined batch | images per forward | checkpointing | s / image | peak GiB | "
            "speed-up vs original |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        base = cb["original"]["s_per_image"]
        for case, r in cb.items():
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
            row = [case, r["runs"], r["combined_batch"], r["micro_batch_size"], r["gradient_checkpointing"]]
            row += [f"{r['s_per_image']:.4g}", peak, f"{base / r['s_per_image']:.2f}x"]
            lines.append("| " + " | ".join(map(str, row)) + " |")
    pr = result.get("projection")
    if pr:
        lines.append(
            f"\nProjected training cost of {pr['classes']} classes x {pr['epochs_per_class']} epochs x "
            f"{pr['epoch_size']} images ({pr['images']} images) on this device:\n"
        )
        lines += ["| schedule | case | combined batch | s / image | hours |", "| --- | --- | --- | --- | --- |"]
        for what, key in (
            ("original (one class at a time, micro-batches of 1)", "original"),
            ("one class at a time (the project's micro-batch)", "one_class_at_a_time"),
            ("class batching (fastest measured)", "class_batching"),
        ):
            c = pr[key]
            row = [what, c["case"], c["combined_batch"], f"{c['s_per_image']:.4g}", f"{c['hours']:.1f}"]
            lines.append("| " + " | ".join(map(str, row)) + " |")
        lines.append(
            f"\nClass batching: {pr['speedup_vs_original']:.2f}x faster than the original's schedule, "
            f"{pr['speedup_vs_one_class']:.2f}x faster than one class at a time."
        )
    g = result.get("gradient_precision")
    if g:
        verdict = "pass" if g["ok"] else "FAIL"
        lines.append(
            f"\nToken gradient, {g['dtype'].removeprefix('torch.')} vs fp32 (one image, same noise and prompt): "
            f"cosine {g['cosine']:.4f}, norm ratio {g['norm_ratio']:.3f}, relative difference {g['rel_diff']:.3f} "
            f"(fp32 norm {g['fp32_norm']:.3g}, loss scale {g['loss_scale']:g} after the scaler's halvings): {verdict} "
            f"(needs cosine >= 0.95, ratio 0.8-1.25). Control: fp32 with another noise, cosine "
            f"{g['control_cosine']:.4f}."
        )
    if result.get("families"):
        lines += family_markdown(result)
    if result["device"] == "cpu":
        lines.append(
            "\nOn a CPU the project runs fp32 (workspace.device_and_dtype): fp16 / bf16 settings do not apply to "
            "the timed rows; the gradient check casts to fp16 itself."
        )
    return "\n".join(lines) + "\n"


def family_markdown(result: dict) -> list[str]:
    families, run = result["families"], result["family_run"]
    lines = [
        "\nNewer pipelines (model_zoo.py's sizes; one epoch of `batch` images in one forward, gradient through the "
        "last step; s / image = (the gradient part + the earlier steps x one no-grad step) / batch; s / class: "
        f"{IMAGES_PER_CLASS} training images, RunConfig's at most 50 epochs x 5; median of {run['repeats']} runs "
        f"after {run['warmup']} warm-up runs; no case starts after {run['budget_s']:g} s; written by "
        f"`{run['command']}`):\n",
        "| variant | case | steps | dtype | checkpointing | s / image | peak GiB | s / class |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, f in families.items():
        for case, r in f["cases"].items():
            row = [variant, case, f["steps"], f["dtype"].removeprefix("torch."), r["gradient_checkpointing"]]
            if r.get("skipped") or r["oom"]:
                row += [f"skipped ({r['skipped']})" if r.get("skipped") else "out of memory", "-", "-"]
            else:
                peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
                row += [f"{r['s_per_image']:.4g}", peak, f"{r['s_per_class']:.0f}"]
            lines.append("| " + " | ".join(map(str, row)) + " |")
    for variant, f in families.items():
        models = f.get("models")
        if not models:  # every case skipped: nothing was built
            continue
        sizes = ", ".join(
            f"{n} {m['parameters'] / 1e9:.3g} B {m['dtype'].removeprefix('torch.')}" for n, m in models.items()
        )
        line = f"\n{variant}: {sizes}; weights {sum(m['gib'] for m in models.values()):.1f} GiB"
        for case, r in f["cases"].items():
            if r.get("measured_s_per_image") is not None:  # the extrapolation's check
                line += f"; {case} over all {r['steps']} steps: {r['measured_s_per_image']:.4g} s / image measured"
                line += f", {r['s_per_image']:.4g} extrapolated"
        lines.append(line + ".")
    return lines


def default_out(tiny: bool, digits: bool = False) -> Path:
    """Where the tables go without `--out`: out/bench/ (out/bench_tiny/, out/bench_digits/), never docs/
    unless asked."""
    return Path(__file__).parent / "out" / ("bench_digits" if digits else "bench_tiny" if tiny else "bench")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU, seconds) instead of SD 1.4 shapes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="add torch.compile(unet) cases (run.py --compile)")
    p.add_argument("--out", type=Path, help="folder for benchmarks.json / .md (out/bench/, --tiny: out/bench_tiny/)")
    p.add_argument("--projected_epochs", type=int, default=50, help="epochs per class in the 1000-class projection")
    p.add_argument("--families", default="all", help=f"all | none | some of {','.join(FAMILY_BENCH)}")
    p.add_argument("--families_only", action="store_true", help="skip the SD 1.4 cases; add to --out's results")
    p.add_argument("--family_repeats", type=int, default=1, help="timed runs per family case (after --warmup)")
    p.add_argument("--budget_s", type=float, default=480, help="no family case starts after this many seconds")
    p.add_argument("--digits", action="store_true", help="class batching in the digits world (CPU, minutes)")
    p.add_argument("--epochs", type=int, default=5, help="--digits: epochs per class, the same both ways")
    p.add_argument("--classes", type=int, default=10, help="--digits: the first N classes")
    return p


def refusal(args, shape_name: str, families: list[str]) -> str | None:
    """Why these arguments cannot run here, in one line (None: they can)."""
    if set(families) - set(FAMILY_BENCH):
        return f"--families {args.families}: choose all, none or from {','.join(FAMILY_BENCH)}"
    if shape_name == "sd14" and args.device == "auto" and not torch.cuda.is_available():
        return "no GPU; SD 1.4 shapes on a CPU take hours (use --tiny, or --device cpu)"
    if shape_name == "sd14" and args.device == "cpu" and families:
        return "the real-size families need a GPU (FLUX.1: 44 GB); add --families none"
    return None


def earlier_result(path: Path, shape_name: str) -> dict:
    """The results already in --out at the same shapes (none: {}), which --families_only adds to."""
    earlier = json.loads(path.read_text()) if path.exists() else {}
    return earlier if earlier.get("shape") == shape_name else {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s  # the whole run's: the SD 1.4 cases always run, first
    if args.digits:
        return main_digits(args)
    shape_name = "tiny" if args.tiny else "sd14"
    families = {"all": list(FAMILY_BENCH), "none": []}.get(args.families, args.families.split(","))
    problem = refusal(args, shape_name, families)
    if problem:
        print(f"bench.py: {problem}", file=sys.stderr)
        return 2
    out = args.out or default_out(args.tiny)
    out.mkdir(parents=True, exist_ok=True)
    import diffusers

    quiet_libraries()
    command = shlex.join(["python", "bench.py", *argv])
    result = dict(device="cpu", torch=torch.__version__, diffusers=diffusers.__version__, shape=shape_name)
    result |= dict(repeats=args.repeats, warmup=args.warmup, command=command)
    result["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    if args.families_only:  # the family rows join an earlier run's SD 1.4 rows rather than replace them
        result = earlier_result(out / "benchmarks.json", shape_name) or result
    else:
        bench_sd(args, shape_name, out, result)
        result["sd_wall_s"] = round(time.monotonic() - start, 1)  # what --budget_s leaves the families
    if families:
        free_memory()  # the SD 1.4 cases' models
        families_start = time.monotonic()
        run = dict(command=command, repeats=args.family_repeats, warmup=args.warmup, budget_s=args.budget_s)
        result |= dict(family_run=run, families=result.get("families", {}))
        kw = dict(repeats=args.family_repeats, warmup=args.warmup)
        bench_families(families, shape_name, args.device, out, result, deadline, **kw)
        run["wall_s"] = round(time.monotonic() - families_start, 1)
    (out / "benchmarks.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "benchmarks.md").write_text(markdown(result))
    print(f"wrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'}")
    return 0


def bench_sd(args, shape_name: str, out: Path, result: dict) -> None:
    """The SD 1.4-shaped (or tiny) cases: class batching, training, generation, then the gradient check."""
    device = args.device  # "auto": resolved by device_dtype, as run.py does
    shape, kw = SHAPES[shape_name], dict(repeats=args.repeats, warmup=args.warmup)
    # The gradient check below runs at the token that the last train case leaves in slot 0 (its kept token).
    cases = [("class_batch", name, dict(over, class_batch=r)) for name, (r, over) in CLASS_BATCH_CASES.items()]
    cases += [("train", *c) for c in TRAIN_CASES.items()] + [("generate", *c) for c in GENERATE_CASES.items()]
    if args.compile:  # last, like a run.py process: one compiled UNet for training, then for evaluation
        cases += [("train", "disco_compile", COMPILE_CASE), ("generate", "disco_compile", COMPILE_CASE)]
    result |= dict(train={}, generate={}, class_batch={})
    with tempfile.TemporaryDirectory(prefix="bench_sd_") as tmp:  # SD 1.4 shapes: about 4.3 GB
        folder = Path(tmp) / "sd"
        build_pipeline(shape, folder)
        cfg = make_cfg(shape, folder, device)
        dev, dtype = device_dtype(cfg)
        # a slot per class trained together, as workspace.load_diffusion sizes them (class_batch x candidates)
        sd = load_sd(
            str(folder),
            dev,
            dtype,
            size=(cfg.height, cfg.width),
            placeholder=cfg.placeholder_token,
            initializer=cfg.initializer_token,
            slots=max(CLASS_BATCH_RUNS),
        )
        clf = build_classifier(shape).to(dev)  # fp32, as workspace.load_diffusion leaves it
        if dev.type == "cuda":
            result["device"] = torch.cuda.get_device_name(dev)
        for what, case, over in cases:
            over = dict(over)
            channels_last = over.pop("channels_last", False)
            cfg = make_cfg(shape, folder, device, **over)
            configure_bench(sd, clf, cfg, channels_last)
            if what == "generate":
                r = bench_generate(sd, cfg, **kw)
            else:
                r = (bench_class_batch if what == "class_batch" else bench_train)(sd, clf, cfg, **kw)
            result[what][case] = r
            print(f"{what:11} {case:20} {r['s_per_image']:.4g} s/image  peak {r['peak_gib']} GiB", flush=True)
            if what == "class_batch" and len(result[what]) == len(CLASS_BATCH_CASES):
                result["projection"] = projection(result[what], args.projected_epochs, cfg.epoch_size)
            (out / "benchmarks.json").write_text(json.dumps(result, indent=2) + "\n")  # after every case
        if not args.compile:  # compiled UNets stay compiled; the check runs the plain models
            configure_bench(sd, clf, make_cfg(shape, folder, device))
            result["gradient_precision"] = g = gradient_precision(
                sd, clf, make_cfg(shape, folder, device), torch.float16
            )
            print(f"gradient fp16 vs fp32: cosine {g['cosine']:.4f}, norm ratio {g['norm_ratio']:.3f}", flush=True)
            (out / "benchmarks.json").write_text(json.dumps(result, indent=2) + "\n")


def main_digits(args) -> int:
    out = args.out or default_out(False, digits=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.epochs < 1 or args.classes < 1:
        print("bench.py: --epochs and --classes must be positive", file=sys.stderr)
        return 2
    quiet_libraries()
    r = bench_digits(args.classes, args.epochs, args.device, args.warmup)
    (out / "benchmarks.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "benchmarks.md").write_text(digits_markdown(r))
    for what in ("one_at_a_time", "class_batch"):
        s = r[what]
        print(f"{what:14} {s['wall_s']:.1f} s  {s['images_per_s']:.2f} images/s  forwards {s['forward_sizes']}")
    print(f"speed-up {r['speedup']:.2f}x; tokens max abs diff {r['tokens']['max_abs_diff']:.1e}")
    print(f"wrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
