"""Build the flow-matching digits world: an SD3-style pipeline on the digits world's VAE and tokenizer.

    python digits/build_flow.py                          # full build into digits/ (about 9 minutes, 1 thread)
    python digits/build_flow.py --out /tmp/f --quick     # a few steps of everything (~15 s)

Writes OUT/flow_pipeline (a diffusers StableDiffusion3Pipeline: SD3Transformer2DModel,
FlowMatchEulerDiscreteScheduler, two CLIPTextModelWithProjection sharing the digits tokenizer, a tiny
frozen T5 whose output is exactly zero, and a copy of digits/pipeline/vae with SD3's shift/scaling
factors) and OUT/flow_build_info.json (steps, timings, held-out checks, the quality table).
Only the transformer and the two CLIP encoders are trained, jointly, with SD3's rectified-flow objective.
Everything is seeded and deterministic on a given machine and --threads value.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from digits.build import BATCH, CAPTION_DROPOUT, EMA_DECAY, batches, classify, seed_all, table  # noqa: E402
from digits.data import AMBIGUOUS, CAPTION_TEMPLATES, DIGIT_WORDS, WORDS, load_split  # noqa: E402
from prompt_datasets import class_prompt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_VAE = os.path.join(HERE, "pipeline", "vae")
SOURCE_TOKENIZER = os.path.join(HERE, "pipeline", "tokenizer")
CLASSIFIER = os.path.join(HERE, "classifier")
CLASSIFIER_B = os.path.join(HERE, "classifier_b")

STEPS = 2400  # transformer + text encoders (scaled by --steps-scale)
LR = 1e-3
WARMUP = 100
WIDTH = 64  # transformer width = caption_projection_dim = joint_attention_dim = CLIP-L + CLIP-G widths
CLIP_WIDTH = 32
T5_TOKENS = 256  # the SD3 pipeline's default max_sequence_length: T5 positions appended to the context
SHIFT = 1.0  # FlowMatchEulerDiscreteScheduler shift (see the README: 1.0 and 3.0 were compared)
# Generation settings the quality table uses (pipeline keyword arguments).
RECOMMENDED_FLOW = {"height": 16, "width": 16, "num_inference_steps": 15, "guidance_scale": 5.0}
QUALITY_SEEDS = 50


# ----------------------------------------------------------------------------- models
def make_clip(tokenizer, seed: int):
    """A CLIP text encoder with projection (SD3's CLIP-L / CLIP-G roles); pools at the first EOS."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_WIDTH,
        intermediate_size=2 * CLIP_WIDTH,
        projection_dim=CLIP_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(cfg)


def make_transformer(seed: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=16,
        num_attention_heads=WIDTH // 16,
        joint_attention_dim=WIDTH,
        caption_projection_dim=WIDTH,
        pooled_projection_dim=2 * CLIP_WIDTH,
        pos_embed_max_size=8,
    )


def make_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT)


def make_t5_tokenizer(captions: list[str]):
    """An offline T5 tokenizer (Unigram, as T5's): every caption word is one piece, any other text falls
    apart into characters. Built from the `tokenizers` library, so no sentencepiece model is needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted({w for c in captions for w in c.split()})
    chars = sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz"))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in words] + [(c, -5.0) for c in chars]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace("▁", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def make_null_t5(tokenizer, seed: int):
    """A tiny frozen T5 whose output is exactly zero (final RMS-norm weight 0): what SD3 feeds the
    transformer when T5 is dropped (text_encoder_3=None), in a folder that plain from_pretrained loads
    (a pipeline saved with None does not: StableDiffusion3Pipeline lists T5 as a required component)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(tokenizer),
        d_model=WIDTH,
        d_kv=16,
        d_ff=WIDTH,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    t5 = T5EncoderModel(cfg).eval().requires_grad_(False)
    t5.encoder.final_layer_norm.weight.zero_()
    return t5


@torch.no_grad()
def posteriors(vae, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posteriors of images in [0, 1], in raw latent units."""
    post = [vae.encode(xb * 2 - 1).latent_dist for xb in x01.split(256)]
    return torch.cat([p.mean for p in post]), torch.cat([p.std for p in post])


def flow_vae(x01: torch.Tensor):
    """The digits VAE with SD3's latent normalisation: shift_factor = mean of the latents, scaling_factor =
    1 / their std (SD3 decodes `latents / scaling_factor + shift_factor`). Returns (vae, mean, std) of
    the posteriors of x01 in raw latent units."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(SOURCE_VAE).eval()
    mean, std = posteriors(vae, x01)
    shift = mean.mean().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / (mean - shift).std().item())
    return vae, mean, std


# ----------------------------------------------------------------------------- attention shortcut
class RepeatedTokenAttnProcessor:
    """SD3's joint attention (diffusers' JointAttnProcessor2_0, no q/k norm) in which the last context token
    stands for `repeats` identical ones. The pipeline appends T5_TOKENS rows of T5 output, all zero here, so
    after the context embedder they are identical tokens that stay identical in every block: attending to n
    equal keys is attending to one with log(n) added to its logit. Training with 1 row instead of 256 gives
    the pipeline's outputs (to float rounding; checked in the build and the tests) at a fifth of the cost."""

    def __init__(self, repeats: int):
        self.log_repeats = math.log(repeats)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n, _ = hidden_states.shape

        def heads(t):
            return t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = (
            heads(torch.cat([img(hidden_states), ctx(encoder_hidden_states)], 1))
            for img, ctx in ((attn.to_q, attn.add_q_proj), (attn.to_k, attn.add_k_proj), (attn.to_v, attn.add_v_proj))
        )
        bias = torch.zeros(1, 1, 1, k.shape[2], dtype=q.dtype)
        bias[..., -1] = self.log_repeats
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).flatten(2)
        image, context = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context


@contextlib.contextmanager
def repeated_token_attention(transformer, repeats: int = T5_TOKENS):
    """Within the block, `transformer` takes the short context (CLIP tokens + one T5 row); afterwards it is
    back on diffusers' own processor."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    transformer.set_attn_processor(RepeatedTokenAttnProcessor(repeats))
    try:
        yield transformer
    finally:
        transformer.set_attn_processor(JointAttnProcessor2_0())


def encode(pipe, prompts: list[str], t5_rows: int = 1):
    """(context, pooled) exactly as the pipeline encodes a prompt, with only `t5_rows` of its zero T5 rows."""
    ctx, _, pooled, _ = pipe.encode_prompt(
        prompts, None, None, device=torch.device("cpu"), do_classifier_free_guidance=False, max_sequence_length=t5_rows
    )
    return ctx, pooled


# ----------------------------------------------------------------------------- training
def all_captions() -> list[str]:
    """Every training caption: template x word (index template * len(WORDS) + word), then "" (dropout)."""
    return [class_prompt(t, "a", w) for t in CAPTION_TEMPLATES for w in WORDS] + [""]


def caption_index(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random template per image, the digit's word, and CAPTION_DROPOUT of them replaced by ""."""
    word_index = torch.tensor([WORDS.index(DIGIT_WORDS[d]) for d in range(10)])
    tmpl = torch.randint(len(CAPTION_TEMPLATES), (len(labels),), generator=g)
    cap = tmpl * len(WORDS) + word_index[labels]
    drop = torch.rand(len(labels), generator=g) < CAPTION_DROPOUT
    return torch.where(drop, torch.full_like(cap, len(CAPTION_TEMPLATES) * len(WORDS)), cap)


def flow_loss(pipe, x0, cap, captions, s, eps) -> torch.Tensor:
    """Rectified flow as SD3: x_s = (1 - s) x0 + s eps, the transformer predicts v = eps - x0 at t = 1000 s."""
    ctx, pooled = encode(pipe, captions)
    xs = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * eps
    pred = pipe.transformer(
        hidden_states=xs, timestep=s * 1000, encoder_hidden_states=ctx[cap], pooled_projections=pooled[cap]
    ).sample
    return F.mse_loss(pred, eps - x0)


@torch.no_grad()
def ema_update(ema_params, params, step: int) -> None:
    """EMA with build.py's warm-up (decay (1 + step) / (10 + step), at most EMA_DECAY)."""
    decay = min(EMA_DECAY, (1 + step) / (10 + step))
    for pe, p in zip(ema_params, params, strict=True):
        pe.lerp_(p, 1 - decay)


def train_flow(pipe, lat_mean, lat_std, labels, steps: int, seed: int = 12):
    """Train pipe.transformer, pipe.text_encoder and pipe.text_encoder_2 jointly; returns their EMA copies.
    s ~ logit-normal(0, 1) (SD3's default density); AdamW, linear warm-up, grad-norm clip 1."""
    g = seed_all(seed)
    vae = pipe.vae.config
    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    ema = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
    params = [p for m in modules for p in m.parameters()]
    ema_params = [p for m in ema for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=1e-2)
    warm = max(1, min(WARMUP, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm))
    captions = all_captions()
    for m in modules:
        m.train()
    it = batches(len(lat_mean), BATCH, g)
    bar = tqdm(range(steps), desc="transformer+text", mininterval=2)
    with repeated_token_attention(pipe.transformer):
        for step in bar:
            idx = next(it)
            z = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)
            x0 = (z - vae.shift_factor) * vae.scaling_factor
            cap = caption_index(labels[idx], g)
            s = torch.sigmoid(torch.randn(len(idx), generator=g))
            eps = torch.randn(x0.shape, generator=g)
            loss = flow_loss(pipe, x0, cap, captions, s, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            ema_update(ema_params, params, step)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return ema


# ----------------------------------------------------------------------------- checks
@torch.no_grad()
def held_out_loss(pipe, lat_mean: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """Flow loss on the posterior means at s = 0.1, 0.2, ..., 0.9 with fixed noise, every caption with its
    word (the first template): comparable between the train split and the held-out split."""
    g = torch.Generator().manual_seed(seed)
    vae = pipe.vae.config
    x0 = (lat_mean - vae.shift_factor) * vae.scaling_factor
    cap = torch.tensor([WORDS.index(DIGIT_WORDS[d]) for d in labels.tolist()])
    losses = []
    with repeated_token_attention(pipe.transformer):
        for s in torch.arange(1, 10) / 10:
            eps = torch.randn(x0.shape, generator=g)
            losses.append(flow_loss(pipe, x0, cap, all_captions(), s.expand(len(x0)), eps).item())
    return sum(losses) / len(losses)


@torch.no_grad()
def shortcut_error(pipe, seed: int = 0) -> float:
    """Largest difference between the transformer on the pipeline's full context (CLIP + 256 T5 rows,
    diffusers' processor) and on the training shortcut (CLIP + 1 row, RepeatedTokenAttnProcessor)."""
    g = torch.Generator().manual_seed(seed)
    prompts = ["A photo of a stick", "", "a rendering of a two"]
    x = torch.randn(len(prompts), 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 500.0, 20.0])
    full = pipe.transformer(x, *encode(pipe, prompts, T5_TOKENS), timestep=t).sample
    with repeated_token_attention(pipe.transformer):
        short = pipe.transformer(x, *encode(pipe, prompts), timestep=t).sample
    return (full - short).abs().max().item()


@torch.no_grad()
def quality(pipe, seeds: int, settings: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Per judge (classifier, classifier_b) and word: counts (10,) of predicted digits over images from
    the pipeline's own __call__ with "A photo of a {word}", one torch.Generator().manual_seed(s) per image."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    judges = {}
    for d in (CLASSIFIER, CLASSIFIER_B):
        judges[os.path.basename(d)] = (
            AutoModelForImageClassification.from_pretrained(d).eval(),
            AutoImageProcessor.from_pretrained(d),
        )
    counts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in judges}
    pipe.set_progress_bar_config(disable=True)
    for word in tqdm(WORDS, desc="quality", mininterval=2):
        gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
        images = pipe([f"A photo of a {word}"] * seeds, generator=gens, **settings).images
        for name, (clf, proc) in judges.items():
            counts[name][word] = torch.bincount(classify(images, clf, proc), minlength=10)
    return counts


def accuracy_rows(counts: dict[str, torch.Tensor], n: int) -> dict[str, dict]:
    """Per word: fraction of images of each named digit (two for a shared word) and of either."""
    rows = {}
    for word, c in counts.items():
        named = AMBIGUOUS.get(word, (DIGIT_WORDS.index(word),))
        rows[word] = {str(d): round(c[d].item() / n, 3) for d in named}
        rows[word]["named"] = round(c[list(named)].sum().item() / n, 3)
    return rows


# ----------------------------------------------------------------------------- main
def assemble(vae, tokenizer, seed: int = 11):
    """A fresh StableDiffusion3Pipeline; T5 left out (None): training encodes with its zero rows directly."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=make_transformer(seed),
        scheduler=make_scheduler(),
        vae=vae,
        text_encoder=make_clip(tokenizer, seed + 1),
        tokenizer=tokenizer,
        text_encoder_2=make_clip(tokenizer, seed + 2),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def save(pipe, path: str) -> None:
    """Save with the null T5 and its tokenizer, keep the digits tokenizer's own files (vocab.json and
    merges.txt beside tokenizer.json), and name the T5 tokenizer's fast class in model_index.json
    (transformers 5 writes "T5Tokenizer", the sentencepiece class in 4.x)."""
    t5_tokenizer = make_t5_tokenizer(all_captions())
    pipe.register_modules(text_encoder_3=make_null_t5(t5_tokenizer, seed=13), tokenizer_3=t5_tokenizer)
    shutil.rmtree(path, ignore_errors=True)
    pipe.save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(os.path.join(path, name))
        shutil.copytree(SOURCE_TOKENIZER, os.path.join(path, name))
    index_file = os.path.join(path, "model_index.json")
    with open(index_file) as f:
        index = json.load(f)
    index["tokenizer_3"] = ["transformers", "T5TokenizerFast"]
    with open(index_file, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)


def build(out: str, steps_scale: float = 1.0, threads: int = 1, seeds: int = QUALITY_SEEDS) -> dict:
    from diffusers import StableDiffusion3Pipeline
    from transformers import CLIPTokenizer

    from workspace import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.makedirs(out, exist_ok=True)
    steps = max(1, int(round(STEPS * steps_scale)))
    info: dict = {"steps_scale": steps_scale, "threads": threads, "steps": {"flow": steps}, "timings_s": {}}
    t_all = time.perf_counter()

    def stage_done(name: str, t0: float) -> None:
        dt = time.perf_counter() - t0
        info["timings_s"][name] = round(dt, 1)
        print(f"[digits-flow] {name}: {dt:.1f} s", flush=True)

    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_split()
    vae, lat_mean, lat_std = flow_vae(x_tr)
    info["vae_shift_factor"], info["vae_scaling_factor"] = vae.config.shift_factor, vae.config.scaling_factor
    pipe = assemble(vae, CLIPTokenizer.from_pretrained(SOURCE_TOKENIZER))
    stage_done("latents", t0)

    t0 = time.perf_counter()
    pipe.transformer, pipe.text_encoder, pipe.text_encoder_2 = train_flow(pipe, lat_mean, lat_std, y_tr, steps)
    stage_done("flow", t0)

    t0 = time.perf_counter()
    path = os.path.join(out, "flow_pipeline")
    save(pipe, path)
    pipe = StableDiffusion3Pipeline.from_pretrained(path)
    info["flow_loss"] = {
        "train": round(held_out_loss(pipe, lat_mean[: len(y_te)], y_tr[: len(y_te)]), 4),
        "held_out": round(held_out_loss(pipe, posteriors(pipe.vae, x_te)[0], y_te), 4),
    }
    info["shortcut_max_abs_error"] = shortcut_error(pipe)
    stage_done("checks", t0)

    t0 = time.perf_counter()
    counts = quality(pipe, seeds, RECOMMENDED_FLOW)
    info["quality"] = {
        "prompt": "A photo of a {word}",
        "seeds": f"0..{seeds - 1}",
        "settings": RECOMMENDED_FLOW | {"shift": SHIFT},
        "counts": {judge: {w: c.tolist() for w, c in by_word.items()} for judge, by_word in counts.items()},
        "accuracy": {judge: accuracy_rows(by_word, seeds) for judge, by_word in counts.items()},
    }
    stage_done("quality", t0)
    for judge, by_word in counts.items():
        print(f"\n{judge}, {seeds} seeds per word, {RECOMMENDED_FLOW}, shift {SHIFT}:\n{table(by_word, seeds)}")

    info["timings_s"]["total"] = round(time.perf_counter() - t_all, 1)
    with open(os.path.join(out, "flow_build_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"[digits-flow] total: {info['timings_s']['total']} s -> {out}", flush=True)
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output folder (default: digits/)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply the training step count")
    ap.add_argument("--quick", action="store_true", help="--steps-scale 0.005 and 2 quality seeds (a smoke test)")
    ap.add_argument("--seeds", type=int, default=QUALITY_SEEDS, help="quality table: seeds 0..N-1 per word")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps_scale, args.seeds = 0.005, 2
    build(args.out, args.steps_scale, args.threads, args.seeds)


if __name__ == "__main__":
    main()
