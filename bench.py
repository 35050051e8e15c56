"""Speed benchmark: the original schedule against the project's, on random-weight models.

python bench.py             # GPU: SD 1.4-shaped UNet / VAE / CLIP text encoder + ViT-L/16 (docs/performance.md)
python bench.py --compile   # also torch.compile(unet) variants (minutes of compilation)
python bench.py --tiny      # the same code on tiny shapes, on a CPU, in seconds
python bench.py --out docs/ # publish: the tables docs/performance.md cites

Cost does not depend on the weights, so nothing is downloaded: the components are built from
configs, saved as a diffusers folder and loaded through the project's `diffusion.load_sd`; the
measured steps are the project's `train.train_step` and `diffusion.generate`. Each case reports the
median over `--repeats` timed runs after `--warmup` runs, with device synchronisation, in seconds per
image, and the peak of torch.cuda.max_memory_allocated (null on a CPU). Then the numerics check: the
token's gradient in fp16 against fp32 (fp16 on a CPU too). Writes benchmarks.json and benchmarks.md
to `--out` (out/bench/ by default, out/bench_tiny/ with --tiny; never docs/ unless asked).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from classifiers import PRESETS, Classifier, Preprocess
from config import RunConfig
from diffusion import configure, generate, initial_noise, load_sd
from prompt_datasets import EVAL_TEMPLATE, TEMPLATES, PromptDataset, class_prompt
from train import epoch_gradient, make_scaler, micro_batch_size, train_class
from workspace import ClassPaths, device_and_dtype, quiet_libraries

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
    "disco_train_class": dict(num_train_epochs=1, full=True),  # train.train_class: + optimizer, PNGs, log
}
GENERATE_CASES = {"original": dict(eval_batch_size=1), "disco": {}, "disco_channels_last": dict(channels_last=True)}
COMPILE_CASE = dict(compile=True)  # --compile: run.py's --compile, torch.compile of the UNet in place


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

    vit = ViTForImageClassification(ViTConfig(num_labels=1000, **shape["vit"], **shape["vit_px"]))
    return Classifier(vit, shape["prep"], [f"class {i}" for i in range(1000)], "cls", "random ViT")


def make_cfg(shape: dict, folder: Path, device: str, **overrides) -> RunConfig:
    """The run's settings: RunConfig's defaults (the paper's) at `shape`'s size; files go next to `folder`."""
    kw = dict(sd_model=str(folder), classifier="inet", device=device, output_path=str(folder.parent), **shape["cfg"])
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
    """Put the loaded models into `cfg`'s settings as run.py does (dtype, then diffusion.configure)."""
    _, dtype = device_dtype(cfg)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (sd.unet, sd.vae):
        if m.dtype != dtype:  # (diffusers warns at every cast)
            m.to(dtype=dtype)
        m.to(memory_format=fmt)
    clf.to(dtype=dtype)
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


def bench_train(sd, clf, cfg: RunConfig, full: bool = False, **kw) -> dict:
    """One epoch as train.train_class runs it: micro-batches of train_step, each loss / epoch_size
    backpropagated into the token (accumulated), so every case computes the same gradient. `full`:
    train_class itself for one epoch (adds the optimizer step, the training PNGs and the log)."""
    bs = micro_batch_size(cfg, sd.device)
    prompts = PromptDataset(cfg.placeholder_token, CLASS_NAME, cfg.number_of_prompts, cfg.epoch_size).epoch(cfg.seed, 0)
    noise = initial_noise(sd, n=cfg.epoch_size, seed=cfg.seed)
    scaler = make_scaler(sd, cfg)  # fp16: scaled as in training

    def epoch():
        if full:
            return train_class(cfg, sd, clf, TARGET, CLASS_NAME, ClassPaths.of(cfg, TARGET, CLASS_NAME))
        sd.token.grad = None
        epoch_gradient(sd, clf, prompts, noise, TARGET, cfg, bs, scaler)

    res = measure(epoch, cfg.epoch_size, sd.device, **kw)
    return dict(res, micro_batch_size=bs, steps=cfg.num_of_SD_inference_steps, dtype=str(sd.dtype))


def bench_generate(sd, cfg: RunConfig, **kw) -> dict:
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.test_size))
    prompt = class_prompt(EVAL_TEMPLATE, cfg.placeholder_token, CLASS_NAME)

    def run():
        generate(sd, prompt, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)

    res = measure(run, len(seeds), sd.device, **kw)
    return dict(res, batch_size=cfg.eval_batch_size, steps=cfg.eval_steps, dtype=str(sd.dtype))


def token_gradient(sd, clf, cfg: RunConfig, prompts: list, noise: torch.Tensor, dtype: torch.dtype):
    """The token's gradient for `prompts` and `noise`, with UNet, VAE and classifier in `dtype`, unscaled,
    and the loss scale it was computed at. fp16 goes through train.make_scaler's GradScaler as in training;
    after an overflow the scale is halved and the gradient recomputed, as the dynamic scaler does over
    the first epochs."""
    for m in (sd.unet, sd.vae, clf):
        m.to(dtype=dtype)
    sd.dtype = dtype
    loss_scale = cfg.loss_scale
    for _ in range(32):
        scaler = make_scaler(sd, replace(cfg, loss_scale=loss_scale))
        sd.token.grad = None
        epoch_gradient(sd, clf, prompts, noise.to(dtype), TARGET, cfg, 1, scaler)
        if not scaler.is_enabled() or torch.isfinite(sd.token.grad).all():
            break
        loss_scale /= 2
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    return sd.token.grad.double() / scale, scale


def gradient_precision(sd, clf, cfg: RunConfig, half: torch.dtype) -> dict:
    """The numerics check: the token's gradient for one image (same noise and prompt) with UNet, VAE
    and classifier in `half` against fp32, on whatever device the models are on (fp16 on a CPU too).
    Passes at cosine >= 0.95 and a norm ratio in 0.8-1.25. The control: the fp32 gradient for another
    noise (seed + 1), whose cosine with the first says how far apart two different gradients are."""
    prompts = PromptDataset(cfg.placeholder_token, CLASS_NAME, cfg.number_of_prompts, 1).epoch(cfg.seed, 0)
    sd.dtype = torch.float32  # the noises are drawn in fp32 and cast
    noise, other = initial_noise(sd, n=1, seed=cfg.seed), initial_noise(sd, n=1, seed=cfg.seed + 1)
    full, _ = token_gradient(sd, clf, cfg, prompts, noise, torch.float32)
    control, _ = token_gradient(sd, clf, cfg, prompts, other, torch.float32)
    low, scale = token_gradient(sd, clf, cfg, prompts, noise, half)

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


def markdown(result: dict) -> str:
    lines = [
        f"# Benchmarks ({result['shape']} shapes, random weights)\n",
        f"{result['device']}, torch {result['torch']}, diffusers {result['diffusers']}; "
        f"median of {result['repeats']} runs after {result['warmup']} warm-up runs. Written by `bench.py`.\n",
        "| what | case | batch | dtype | s / image | peak GiB | speed-up vs original |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for what in ("train", "generate"):
        base = result[what]["original"]["s_per_image"]
        for case, r in result[what].items():
            batch = r.get("micro_batch_size", r.get("batch_size"))
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
            row = [what, case, batch, r["dtype"].removeprefix("torch."), f"{r['s_per_image']:.4g}", peak]
            lines.append("| " + " | ".join(map(str, row)) + f" | {base / r['s_per_image']:.2f}x |")
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
    if result["device"] == "cpu":
        lines.append(
            "\nOn a CPU the project runs fp32 (workspace.device_and_dtype): fp16 / bf16 settings do not apply to "
            "the timed rows; the gradient check casts to fp16 itself."
        )
    return "\n".join(lines) + "\n"


def default_out(tiny: bool) -> Path:
    """Where the tables go without `--out`: out/bench/ (out/bench_tiny/), never docs/ unless asked."""
    return Path(__file__).parent / "out" / ("bench_tiny" if tiny else "bench")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU, seconds) instead of SD 1.4 shapes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="add torch.compile(unet) cases (run.py --compile)")
    p.add_argument("--out", type=Path, help="folder for benchmarks.json / .md (out/bench/, --tiny: out/bench_tiny/)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    shape_name = "tiny" if args.tiny else "sd14"
    device = args.device  # "auto": resolved by device_dtype, as run.py does
    if shape_name == "sd14" and device == "auto" and not torch.cuda.is_available():
        print("bench.py: no GPU; SD 1.4 shapes on a CPU take hours (use --tiny, or --device cpu)", file=sys.stderr)
        return 2
    out = args.out or default_out(args.tiny)
    out.mkdir(parents=True, exist_ok=True)
    shape, kw = SHAPES[shape_name], dict(repeats=args.repeats, warmup=args.warmup)
    cases = [("train", *c) for c in TRAIN_CASES.items()] + [("generate", *c) for c in GENERATE_CASES.items()]
    if args.compile:  # last, like a run.py process: one compiled UNet for training, then for evaluation
        cases += [("train", "disco_compile", COMPILE_CASE), ("generate", "disco_compile", COMPILE_CASE)]
    import diffusers

    quiet_libraries()
    result = dict(device="cpu", torch=torch.__version__, diffusers=diffusers.__version__, shape=shape_name, **kw)
    result |= dict(tf32_matmul=torch.backends.cuda.matmul.allow_tf32, train={}, generate={})
    with tempfile.TemporaryDirectory(prefix="bench_sd_") as tmp:  # SD 1.4 shapes: about 4.3 GB
        folder = Path(tmp) / "sd"
        build_pipeline(shape, folder)
        cfg = make_cfg(shape, folder, device)
        dev, dtype = device_dtype(cfg)
        sd = load_sd(str(folder), dev, dtype, (cfg.height, cfg.width), cfg.placeholder_token, cfg.initializer_token)
        clf = build_classifier(shape).to(dev)
        if dev.type == "cuda":
            result["device"] = torch.cuda.get_device_name(dev)
        for what, case, over in cases:
            over = dict(over)
            channels_last, full = over.pop("channels_last", False), over.pop("full", False)
            cfg = make_cfg(shape, folder, device, **over)
            configure_bench(sd, clf, cfg, channels_last)
            r = bench_train(sd, clf, cfg, full, **kw) if what == "train" else bench_generate(sd, cfg, **kw)
            result[what][case] = r
            print(f"{what:8} {case:20} {r['s_per_image']:.4g} s/image  peak {r['peak_gib']} GiB", flush=True)
            (out / "benchmarks.json").write_text(json.dumps(result, indent=2) + "\n")  # after every case
        if not args.compile:  # compiled UNets stay compiled; the check runs the plain models
            configure_bench(sd, clf, make_cfg(shape, folder, device))
            result["gradient_precision"] = g = gradient_precision(
                sd, clf, make_cfg(shape, folder, device), torch.float16
            )
            print(f"gradient fp16 vs fp32: cosine {g['cosine']:.4f}, norm ratio {g['norm_ratio']:.3f}", flush=True)
            (out / "benchmarks.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "benchmarks.md").write_text(markdown(result))
    print(f"wrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
