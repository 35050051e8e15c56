"""Build the digits world from nothing: tokenizer, VAE, text encoder + UNet, two classifiers.

    python digits/build.py                      # full build into digits/ (about 8 minutes, 2 cores)
    python digits/build.py --out /tmp/w --steps-scale 0.01   # a few steps of every stage

Everything is seeded and deterministic on a given machine and --threads value. Writes OUT/pipeline (a
diffusers StableDiffusionPipeline), OUT/classifier (ViT), OUT/classifier_b (ConvNeXt)
and OUT/build_info.json (timings, held-out accuracies).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from digits.data import CAPTION_TEMPLATES, DIGIT_WORDS, WORDS, id2label, label2id, load_split  # noqa: E402
from digits.tokenizer import build_tokenizer  # noqa: E402
from prompt_datasets import class_prompt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# Full-build step counts (scaled by --steps-scale).
STAGES = ("pipeline", "classifier", "classifier_b")
STEPS = {"vae": 400, "unet": 2400, "classifier": 1500, "classifier_b": 1200}
BATCH = 64
TEXT_POSITIONS = 16
BETA_SCHEDULE = "squaredcos_cap_v2"
TRAIN_TIMESTEPS = 1000
CAPTION_DROPOUT = 0.15
EMA_DECAY = 0.999
# Classifier input normalisation (the image in [0, 1] is normalised with these).
NORM_A = (0.5, 0.5)
NORM_B = (0.3, 0.4)  # roughly the digits' own mean / std


# ----------------------------------------------------------------------------- models
def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def text_encoder_in_hub_layout(folder: str) -> None:
    """Key the saved text encoder as the hub's SD checkpoints are (`text_model.` prefix). transformers 5
    saves it without the prefix, which 4.x (the floor in requirements.txt) loads as random weights
    without an error; every allowed version loads the hub layout."""
    from safetensors.torch import load_file, save_file

    f = os.path.join(folder, "model.safetensors")
    state = {k.removeprefix("text_model."): v for k, v in load_file(f).items()}
    save_file({f"text_model.{k}": v for k, v in state.items()}, f, {"format": "pt"})


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TEXT_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def make_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE, prediction_type="epsilon", clip_sample=False
    )


def make_sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule=BETA_SCHEDULE,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,  # as SD 1.x; any other value is rewritten to 1 by StableDiffusionPipeline
        timestep_spacing="leading",
    )


def make_classifier_a():
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
        id2label=id2label(),
        label2id=label2id(),
    )
    return ViTForImageClassification(cfg)


def make_classifier_b():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(
        num_channels=3,
        patch_size=2,
        num_stages=2,
        hidden_sizes=[32, 64],
        depths=[2, 2],
        image_size=16,
        drop_path_rate=0.0,
        num_labels=10,
        id2label=id2label(),
        label2id=label2id(),
    )
    return ConvNextForImageClassification(cfg)


def make_processor(mean_std: tuple[float, float]):
    from transformers import ViTImageProcessor

    m, s = mean_std
    return ViTImageProcessor(
        do_resize=True,
        size={"height": 16, "width": 16},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[m, m, m],
        image_std=[s, s, s],
    )


# ----------------------------------------------------------------------------- helpers
def seed_all(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def scaled(name: str, scale: float) -> int:
    return max(1, int(round(STEPS[name] * scale)))


def augment(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Small random affine (rotation, scale, shift), contrast, blur and pixel noise; x in [0, 1]."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(12) * strength
    sc = 1 + (torch.rand(n, generator=g) * 2 - 1) * 0.1 * strength
    tx, ty = ((torch.rand(2, n, generator=g) * 2 - 1) * 0.18 * strength).unbind(0)  # ~1.4 px
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # random blur / sharpen: mix with a 3x3 box blur
    blur = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    a = (torch.rand(n, 1, 1, 1, generator=g) * 1.0 - 0.4) * strength
    x = x + a * (blur - x)
    # contrast / brightness
    c = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 0.2 * strength
    b = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 0.08 * strength
    x = x * c + b
    x = x + torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.08 * strength
    return x.clamp(0, 1)


def batches(n: int, batch: int, g: torch.Generator):
    """Endless shuffled mini-batches of indices."""
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


@torch.no_grad()
def accuracy(model, x01: torch.Tensor, y: torch.Tensor, mean_std: tuple[float, float]) -> float:
    model.eval()
    m, s = mean_std
    pred = torch.cat([model(pixel_values=(xb - m) / s).logits.argmax(-1) for xb in x01.split(256)])
    return (pred == y).float().mean().item()


@torch.no_grad()
def shifted_accuracy(model, x01: torch.Tensor, y: torch.Tensor, mean_std: tuple[float, float]) -> float:
    """Mean accuracy over the images moved by one pixel each way (the edge repeated)."""
    from selection import SHIFTS, shifted

    return sum(accuracy(model, shifted(x01, *d), y, mean_std) for d in SHIFTS) / len(SHIFTS)


# ----------------------------------------------------------------------------- stages
@torch.no_grad()
def tie_gray_output(vae) -> None:
    """Make the decoder's last conv produce identical R, G, B (the data is gray).

    Projecting the three output filters onto their mean after each step keeps the plain
    AutoencoderKL architecture while removing the colour noise that an unconstrained
    decoder shows on slightly off-manifold latents (e.g. guided samples)."""
    w, b = vae.decoder.conv_out.weight, vae.decoder.conv_out.bias
    w.copy_(w.mean(0, keepdim=True).expand_as(w))
    b.fill_(b.mean().item())


def train_vae(x_train: torch.Tensor, steps: int, seed: int = 1):
    g = seed_all(seed)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 50) * (0.1 + 0.9 * (1 - i / steps)))
    data = x_train * 2 - 1
    vae.train()
    it = batches(len(data), BATCH, g)
    bar = tqdm(range(steps), desc="vae", mininterval=2)
    for _ in bar:
        xb = data[next(it)]
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, xb)
        kl = post.kl().mean()
        loss = mse + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tie_gray_output(vae)
        bar.set_postfix(mse=f"{mse.item():.4f}", refresh=False)
    vae.eval()
    with torch.no_grad():
        mean = torch.cat([vae.encode(xb).latent_dist.mean for xb in data.split(256)])
        std = torch.cat([vae.encode(xb).latent_dist.std for xb in data.split(256)])
    scale = 1.0 / mean.std().item()
    vae.register_to_config(scaling_factor=scale)
    return vae, mean, std


def train_unet(
    lat_mean: torch.Tensor, lat_std: torch.Tensor, labels: torch.Tensor, tokenizer, steps: int, seed: int = 2
):
    g = seed_all(seed)
    text_encoder = make_text_encoder(tokenizer)
    unet = make_unet()
    noise_sched = make_train_scheduler()
    captions = [class_prompt(t, "a", w) for t in CAPTION_TEMPLATES for w in WORDS] + [""]
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    # caption index per (template, digit): template * len(WORDS) + word index
    word_index = torch.tensor([WORDS.index(DIGIT_WORDS[d]) for d in range(10)])
    empty = len(captions) - 1
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm))
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    for p in ema_params:
        p.requires_grad_(False)
    acp = noise_sched.alphas_cumprod
    unet.train()
    text_encoder.train()
    it = batches(len(lat_mean), BATCH, g)
    bar = tqdm(range(steps), desc="unet+text", mininterval=2)
    for step in bar:
        idx = next(it)
        z0 = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)
        tmpl = torch.randint(len(CAPTION_TEMPLATES), (len(idx),), generator=g)
        cap = tmpl * len(WORDS) + word_index[labels[idx]]
        drop = torch.rand(len(idx), generator=g) < CAPTION_DROPOUT
        cap = torch.where(drop, torch.full_like(cap, empty), cap)
        t = torch.randint(TRAIN_TIMESTEPS, (len(idx),), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        cond = text_encoder(ids[cap])[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema_params, params, strict=True):
                pe.lerp_(p, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    ema_unet.eval()
    ema_text.eval()
    return ema_unet, ema_text


def train_classifier(model, x_train, y_train, x_test, y_test, mean_std, steps: int, seed: int, lr: float, desc: str):
    g = seed_all(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warm = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    m, s = mean_std
    it = batches(len(x_train), BATCH, g)
    bar = tqdm(range(steps), desc=desc, mininterval=2)
    for _ in bar:
        idx = next(it)
        xb = augment(x_train[idx], g)
        logits = model(pixel_values=(xb - m) / s).logits
        loss = F.cross_entropy(logits, y_train[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return accuracy(model, x_test, y_test, mean_std)


# ----------------------------------------------------------------------------- main
def build(out: str, steps_scale: float = 1.0, threads: int = 2, stages: tuple[str, ...] | None = None) -> dict:
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    stages = stages or STAGES
    os.makedirs(out, exist_ok=True)
    info: dict = {"steps_scale": steps_scale, "threads": threads, "timings_s": {}, "steps": {}}
    earlier = Path(out) / "build_info.json"  # a partial build keeps the other stages' entries
    partial = set(stages) != set(STAGES) and earlier.exists()
    if partial:
        info = json.loads(earlier.read_text()) | {"steps_scale": steps_scale, "threads": threads}
    t_all = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_split()
    info["n_train"], info["n_held_out"] = len(y_tr), len(y_te)

    def stage_done(name: str, t0: float) -> None:
        dt = time.perf_counter() - t0
        info["timings_s"][name] = round(dt, 1)
        print(f"[digits] {name}: {dt:.1f} s", flush=True)

    if "pipeline" in stages:
        t0 = time.perf_counter()
        words = [t.replace("{}", "") for t in CAPTION_TEMPLATES] + WORDS
        tokenizer = build_tokenizer(words, model_max_length=TEXT_POSITIONS)
        stage_done("tokenizer", t0)

        t0 = time.perf_counter()
        n = info["steps"]["vae"] = scaled("vae", steps_scale)
        vae, lat_mean, lat_std = train_vae(x_tr, n)
        with torch.no_grad():
            rec = vae.decode(lat_mean[:256]).sample
            info["vae_mse"] = round(F.mse_loss(rec, x_tr[:256] * 2 - 1).item(), 5)
        info["vae_scaling_factor"] = vae.config.scaling_factor
        stage_done("vae", t0)

        t0 = time.perf_counter()
        n = info["steps"]["unet"] = scaled("unet", steps_scale)
        sf = vae.config.scaling_factor
        unet, text_encoder = train_unet(lat_mean * sf, lat_std * sf, y_tr, tokenizer, n)
        stage_done("unet", t0)

        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=make_sample_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        path = os.path.join(out, "pipeline")
        shutil.rmtree(path, ignore_errors=True)
        pipe.save_pretrained(path, safe_serialization=True)
        text_encoder_in_hub_layout(os.path.join(path, "text_encoder"))
        # keep the plain BPE files beside tokenizer.json
        build_tokenizer(words, out_dir=os.path.join(path, "tokenizer"), model_max_length=TEXT_POSITIONS)

    # The judge never sees an image the training classifier learned from (nor the UNet): classifier_b trains
    # on the held-out split and is measured on the train split, classifier A the other way round.
    for name, make, norm, seed, lr, fit, unseen, split in (
        ("classifier", make_classifier_a, NORM_A, 3, 1e-3, (x_tr, y_tr), (x_te, y_te), "train split"),
        ("classifier_b", make_classifier_b, NORM_B, 4, 2e-3, (x_te, y_te), (x_tr, y_tr), "held-out split"),
    ):
        if name not in stages:
            continue
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = make()
        n = info["steps"][name] = scaled(name, steps_scale)
        acc = train_classifier(model, *fit, *unseen, norm, n, seed, lr, name)
        info[f"{name}_trained_on"] = split
        info[f"{name}_unseen_accuracy"] = round(acc, 4)
        info[f"{name}_unseen_shifted_accuracy"] = round(shifted_accuracy(model, *unseen, norm), 4)
        print(f"[digits] {name} accuracy on the split it never saw: {acc:.4f}", flush=True)
        path = os.path.join(out, name)
        shutil.rmtree(path, ignore_errors=True)
        model.save_pretrained(path, safe_serialization=True)
        make_processor(norm).save_pretrained(path)
        stage_done(name, t0)

    timings = info["timings_s"]
    timings.pop("total", None)  # a partial build: the stages' sum, the earlier ones included
    timings["total"] = round(sum(timings.values()) if partial else time.perf_counter() - t_all, 1)
    with open(os.path.join(out, "build_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"[digits] total: {info['timings_s']['total']} s -> {out}", flush=True)
    return info


@torch.no_grad()
def classify(images, clf, proc) -> torch.Tensor:
    inputs = proc(images=images, return_tensors="pt")
    return clf(**inputs).logits.argmax(-1)


def table(results: dict[str, torch.Tensor], n: int) -> str:
    head = "| prompt word | " + " | ".join(f"{d} ({w})" for d, w in enumerate(DIGIT_WORDS)) + " | named digit(s) |"
    lines = [head, "|" + " --- |" * 12]
    for word, c in results.items():
        named = [d for d, w in enumerate(DIGIT_WORDS) if w == word]
        frac = c.float() / n
        cells = [f"**{frac[d]:.2f}**" if d in named else (f"{frac[d]:.2f}" if c[d] else ".") for d in range(10)]
        summary = " / ".join(f"{d}: {frac[d]:.0%}" for d in named)
        if len(named) == 2:
            summary += f" (sum {frac[named].sum():.0%})"
        lines.append(f"| {word} | " + " | ".join(cells) + f" | {summary} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output folder (default: digits/)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's step count")
    ap.add_argument("--quick", action="store_true", help="same as --steps-scale 0.005 (a smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", nargs="+", choices=list(STAGES), default=None, help="default: all")
    args = ap.parse_args(argv)
    scale = 0.005 if args.quick else args.steps_scale
    build(args.out, scale, args.threads, tuple(args.stages) if args.stages else None)


if __name__ == "__main__":
    main()
