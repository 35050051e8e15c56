"""The diffusion model side: loading any supported pipeline (families.py) with the class token S_c
added to its text encoders, prompt encoding, the one denoising loop used by training and generation,
and decoding (token files: tokens.py)."""

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from families import FAMILIES, Prompt
from utils import UsageError, hub_guard


@dataclass
class Encoder:
    """One text encoder that S_c is added to: its placeholder rows and the initializer's row."""

    key: str  # token-file key: clip_l, clip_g or t5xxl
    model: nn.Module
    tokenizer: object
    slot_ids: list[int]  # the placeholder words' ids in this tokenizer
    init: torch.Tensor  # the initializer token's row (fp32)
    trained: bool  # whether S_c's row in this encoder is trained (else it stays at `init`)


@dataclass
class SD:
    pipe: "object"  # the diffusers pipeline (kept for save_as_full_pipeline)
    family: object  # families.FAMILIES entry
    encoders: list[Encoder]
    words: list[str]  # the placeholder word of each slot: slot 0 is S_c, the others serve runs trained together
    token: nn.Parameter  # S_c's value in slot 0 (fp32): the trained encoders' rows end to end
    values: list[torch.Tensor]  # each slot's value; training puts each run's own parameter here
    init_embedding: torch.Tensor  # the initializer's rows end to end, to restart each class from
    device: torch.device
    dtype: torch.dtype  # the denoiser's dtype (and the VAE's, except an SDXL VAE kept in fp32 for fp16)
    height: int  # image size in pixels
    width: int
    forward_limit: int = 0  # training images per forward known to fit after an out-of-memory error (0: none)
    generate_limit: int = 0  # the same for generation

    def __getattr__(self, name):  # sd.unet, sd.transformer, sd.vae, sd.tokenizer, sd.text_encoder, sd.scheduler
        return getattr(self.pipe, name)

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self.pipe, self.family.denoiser)

    @property
    def slot_ids(self) -> list[int]:
        return self.encoders[0].slot_ids

    def slot_word(self, k: int) -> str:
        """The placeholder word of slot k, as it is written in a prompt."""
        return self.words[k]

    def trained(self) -> list[tuple[Encoder, slice]]:
        """The trained encoders and where each one's row lies in a token value."""
        out, start = [], 0
        for e in self.encoders:
            if e.trained:
                out.append((e, slice(start, start + len(e.init))))
                start += len(e.init)
        return out

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents for the configured image size, from the models' configs."""
        return self.family.noise_shape(self)


def model_family(model):
    """The family from the model's own model_index.json (never from its name), or from a pipeline object's
    class (the benchmark builds its random models in memory); one line if unsupported. Returns the
    pipeline class name, the family and the token-file keys of the text encoders the model has."""
    from diffusers import DiffusionPipeline

    if isinstance(model, str):
        _check_folder(model)
        with hub_guard(f"Stable Diffusion model {model}"):
            index = DiffusionPipeline.load_config(model)
        cls = index.get("_class_name")
        if cls is None:
            raise UsageError(f"--sd_model {model}: its model_index.json names no pipeline class (_class_name)")
    else:
        cls, index = type(model).__name__, model.config
    if cls not in FAMILIES:
        names = ", ".join(FAMILIES)
        raise UsageError(f"--sd_model {model}: a {cls}; supported text-to-image pipelines: {names}")
    family = FAMILIES[cls]
    present = [key for te, _, key in family.encoders if (index.get(te) or [None])[0] is not None]
    return cls, family, present


def _check_folder(model: str) -> None:
    """A local folder given as the model says what it lacks, rather than the hub's message."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return
    if not (folder / "model_index.json").is_file():
        raise UsageError(f"--sd_model {model}: not a diffusers pipeline folder (no model_index.json in it)")


def load_sd(
    model,
    device,
    dtype,
    *,
    size: tuple[int, int],
    placeholder: str,
    initializer: str,
    slots: int = 1,
    safety_checker: bool = False,
    train_encoders: str = "",
) -> SD:
    """The pipeline (`model`: hub id, folder, or a built pipeline) with S_c added (`slots` placeholder
    words: `placeholder`, then `placeholder`1, 2, ... for runs trained together) to every text encoder,
    frozen, in the run's dtype. `train_encoders`: the token-file keys of the encoders whose row is trained
    (empty: every CLIP encoder). `safety_checker`: keep the model's own, if it has one (the original's
    evaluation did, docs/original.md §6)."""
    import diffusers

    cls, family, present = model_family(model)
    trained = trained_keys(train_encoders, present, family)
    pipe = model
    if isinstance(model, str):
        drop = not safety_checker and family.safety_checker is not None
        no_checker = {family.safety_checker: None, "requires_safety_checker": False} if drop else {}
        with hub_guard(f"Stable Diffusion model {model}"):
            pipe = getattr(diffusers, cls).from_pretrained(model, **no_checker)
    pipe.set_progress_bar_config(disable=True)
    _place(pipe, family, device, dtype)
    words = [placeholder] + [f"{placeholder}{k}" for k in range(1, slots)]
    encoders = [
        _add_words(getattr(pipe, te), getattr(pipe, tk), key, words, initializer, key in trained, family)
        for te, tk, key in family.encoders
        if getattr(pipe, te, None) is not None
    ]
    init = torch.cat([e.init for e in encoders if e.trained])
    token = nn.Parameter(init.clone())
    sd = SD(
        pipe, family, encoders, words, token, [token] + [init.clone() for _ in words[1:]], init, device, dtype, *size
    )
    for e, part in sd.trained():
        _inject(e, sd.values, part)
    for k in range(slots):
        set_token(sd, init, k)
    m = family.size_multiple(sd)
    for flag, v in (("height", sd.height), ("width", sd.width)):
        if v % m:
            raise UsageError(f"--{flag} {v}: this model needs a multiple of {m}")
    return sd


def trained_keys(train_encoders: str, present: list[str], family) -> list[str]:
    """The encoders whose row is trained: `--train_encoders` (comma-separated token-file keys), by default
    every CLIP encoder the model has."""
    if not train_encoders:
        return [k for k in present if k.startswith("clip")]
    keys = [k.strip() for k in train_encoders.split(",") if k.strip()]
    wrong = [k for k in keys if k not in present]
    if wrong or not keys:
        has = ", ".join(present)
        raise UsageError(f"--train_encoders {train_encoders!r}: this {family.name} model has {has}")
    return keys


def _place(pipe, family, device, dtype) -> None:
    """Frozen models on the device: the denoiser and VAE in the run's dtype, text encoders in fp32 (docs/
    original.md §3). An SDXL VAE asks to stay in fp32 (`force_upcast`: it overflows in fp16)."""
    for name in [te for te, _, _ in family.encoders] + [family.safety_checker]:
        if name is not None and getattr(pipe, name, None) is not None:
            getattr(pipe, name).requires_grad_(False).eval().to(device)
    denoiser, vae = getattr(pipe, family.denoiser), pipe.vae
    for m in (denoiser, vae):
        m.requires_grad_(False).eval()
    denoiser.to(device, dtype)
    upcast = dtype == torch.float16 and family.vae_upcast and vae.config.get("force_upcast", False)
    vae.to(device, torch.float32 if upcast else dtype)


def _add_words(model, tok, key: str, words: list[str], initializer: str, trained: bool, family) -> Encoder:
    """The placeholder words added to one tokenizer, with rows in its encoder's embedding table."""
    if any(w in tok.get_vocab() for w in words) or tok.add_tokens(words) != len(words):
        raise UsageError(f"--placeholder_token {words[0]!r}: already in the vocabulary; choose a new word")
    init_ids = tok.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        pieces = tok.convert_ids_to_tokens(init_ids)
        raise UsageError(f"--initializer_token {initializer!r}: must be one token, the {key} tokenizer gives {pieces}")
    slot_ids = tok.convert_tokens_to_ids(words)
    # New rows only when the ids pass the table's end: T5's table has spare rows (T5-XXL: 32128 rows for
    # 32100 entries) and must not shrink. New rows are overwritten by set_token.
    if max(slot_ids) >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    if not family.classic and key.startswith("clip"):
        _pool_at_end_of_text(model, tok)
    init = model.get_input_embeddings().weight[init_ids[0]].detach().float().clone()
    return Encoder(key, model, tok, slot_ids, init, trained)


def _pool_at_end_of_text(model, tok) -> None:
    """transformers' CLIP pools at the highest token id when its config says `eos_token_id: 2` (the real
    SDXL, SD3 and FLUX configs do): an added word has the highest id, so the pooled vector would be taken at
    S_c. Pool at the tokenizer's end-of-text token, as ComfyUI does (its EOS keeps the highest id)."""
    model.config.eos_token_id = tok.eos_token_id
    for m in model.modules():
        if "eos_token_id" in vars(m):
            m.eos_token_id = tok.eos_token_id


def _inject(encoder: Encoder, values: list[torch.Tensor], part: slice) -> None:
    """Each slot's row in this encoder comes from its value (a trained run's own parameter during
    training): only these tensors are trained, so no weight decay or update can touch the rest of the
    vocabulary (docs/original.md §7.2)."""
    ids = encoder.slot_ids

    def inject(_module, inputs, out):
        for tid, value in zip(ids, values):
            out = torch.where((inputs[0] == tid).unsqueeze(-1), value[part].to(out.dtype), out)
        return out

    # Every embedding module with the table's weight: transformers 5's T5 looks ids up through
    # `encoder.embed_tokens`, a module apart from `get_input_embeddings()` that shares its weight.
    weight = encoder.model.get_input_embeddings().weight
    tables = {id(m): m for m in encoder.model.modules() if isinstance(m, nn.Embedding) and m.weight is weight}
    for m in tables.values():
        m.register_forward_hook(inject)


def configure(sd: SD, gradient_checkpointing: bool, compile: bool = False) -> None:
    """The run's model settings: checkpointing of denoiser and VAE activations (used only in the
    gradient steps, see `checkpointing_mode`), and torch.compile of the denoiser in place (the
    pipeline keeps its object)."""
    for m in (sd.denoiser, sd.vae):
        m.enable_gradient_checkpointing() if gradient_checkpointing else m.disable_gradient_checkpointing()
    if compile:
        sd.denoiser.compile()


@contextmanager
def precision(sd: SD, dtype: torch.dtype):
    """Denoiser and VAE in `dtype` for a while (fp16 -> fp32 -> fp16 is exact), e.g. the original's fp32
    evaluation of its fp16-trained pipeline (docs/original.md §6)."""
    old = sd.dtype, sd.denoiser.dtype, sd.vae.dtype
    sd.denoiser.to(dtype), sd.vae.to(dtype)
    sd.dtype = dtype
    try:
        yield
    finally:
        sd.dtype = old[0]
        sd.denoiser.to(old[1]), sd.vae.to(old[2])


def safety_checked(sd: SD, images: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] through the model's safety checker, when it has one: a flagged image
    comes back black (and counts as wrong), as in the original's evaluation (docs/original.md §6)."""
    if sd.family.safety_checker is None or getattr(sd.pipe, sd.family.safety_checker, None) is None:
        return images
    checker = getattr(sd.pipe, sd.family.safety_checker)
    device = next(checker.parameters()).device
    pil = sd.pipe.image_processor.numpy_to_pil(images.permute(0, 2, 3, 1).float().numpy())
    clip_input = sd.pipe.feature_extractor(pil, return_tensors="pt").pixel_values.to(device)
    checked, _ = checker(images=images.clone(), clip_input=clip_input)
    return checked


@contextmanager
def checkpointing_mode(sd: SD):
    """Train mode for the checkpointed models during a gradient step. Older diffusers (0.30, say)
    checkpoint only when `module.training` is true, newer ones when grad is enabled; the original
    kept `unet.train()` "to enable gradient checkpointing". SD's UNet and VAE have no batch norm
    and every dropout module stays in eval mode, so only rounding can change (diffusers makes a
    tensor contiguous in train mode; tested). Generation stays in eval mode."""
    models = [m for m in (sd.denoiser, sd.vae) if m.is_gradient_checkpointing]
    for m in models:
        m.train()
        for d in m.modules():
            if isinstance(d, nn.modules.dropout._DropoutNd):
                d.eval()
    try:
        yield
    finally:
        for m in models:
            m.eval()


def set_token(sd: SD, value: torch.Tensor, slot: int = 0) -> None:
    """Slot `slot` embeds to `value`, the trained encoders' rows end to end (slot 0: S_c, whose parameter
    `sd.token` takes the value)."""
    with torch.no_grad():
        if slot == 0:
            sd.token.copy_(value)
            sd.values[0] = sd.token
        else:
            sd.values[slot] = value.detach().float().clone()
        for e, part in sd.trained():
            weight = e.model.get_input_embeddings().weight
            weight[e.slot_ids[slot]] = value[part].to(weight.device, weight.dtype)
        for e in sd.encoders:
            if not e.trained:
                weight = e.model.get_input_embeddings().weight
                weight[e.slot_ids[slot]] = e.init.to(weight.device, weight.dtype)


def encode(sd: SD, prompts: list[str], length: int | None = None, autocast: bool = False) -> Prompt:
    """Prompt embeddings as the family's pipeline makes them, in the denoiser's dtype (`length`, `autocast`:
    the original's SD 1.x options, families.StableDiffusion.encode)."""
    return sd.family.encode(sd, prompts, length, autocast).to(sd.dtype)


def unconditional(sd: SD, length: int | None = None, autocast: bool = False) -> Prompt | None:
    """The batch-1 unconditional input of classifier-free guidance, as the family's pipeline makes it
    (None where the family has none)."""
    return sd.family.uncond(sd, lambda prompts: encode(sd, prompts, length, autocast))


def longest_prompt(sd: SD, prompts: list[str]) -> int:
    """The number of tokens of the longest prompt (with start and end tokens)."""
    ids = sd.tokenizer(prompts, truncation=True, max_length=sd.tokenizer.model_max_length).input_ids
    return max(len(i) for i in ids)


def initial_noise(sd: SD, seeds: list[int] | None = None, n: int = 0, seed: int = 0) -> torch.Tensor:
    """Starting latents N(0, 1) (the sampler's initial scale is applied in `denoise`). With `seeds`: one
    CPU generator per image, exactly as the diffusers pipelines draw them for batch-1 calls, so batched
    generation reproduces per-seed images. Otherwise `n` latents from one generator seeded with `seed`
    (the training noises)."""
    shape = sd.latent_shape
    if seeds is not None:
        noise = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(s), dtype=sd.dtype) for s in seeds]
        noise = torch.cat(noise)
    else:
        noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=sd.dtype)
    return noise.to(sd.device)


def denoise(sd: SD, latents, cond: Prompt, uncond: Prompt | None, steps: int, guidance: float, grad_steps=0):
    """Sampling with the model's scheduler, classifier-free guided where the family's pipeline guides.
    "Gradient skipping" (docs/original.md §1): only the denoiser calls from sampler step
    `steps - grad_steps` on build a graph, by the original's index rule over `scheduler.timesteps`
    (`i >= num_inference_steps - grad_steps`). PNDM with skip_prk_steps (SD 1.4) lists N+1
    timesteps for N steps, so grad_steps=1 opens two UNet calls there (t=34 and t=1 at 30 steps),
    as in the original; DDIM, Euler and flow matching list N, so one. Earlier calls run without gradient."""
    fam, sched = sd.family, sd.scheduler
    fam.set_timesteps(sd, steps, fam.pack(sd, latents))
    latents = fam.pack(sd, latents * getattr(sched, "init_noise_sigma", 1.0))
    guided = uncond is not None and fam.guided(sd, guidance)
    context = Prompt.cat([uncond, cond]) if guided else cond
    for i, t in enumerate(sched.timesteps):
        with torch.set_grad_enabled(grad_steps > 0 and i >= steps - grad_steps):
            ctx = context if torch.is_grad_enabled() else context.detach()
            x = torch.cat([latents] * 2) if guided else latents
            if hasattr(sched, "scale_model_input"):  # flow matching has none
                x = sched.scale_model_input(x, t)
            pred = fam.predict(sd, x, t, ctx, guidance)
            if guided:
                pred_u, pred_c = pred.chunk(2)
                pred = pred_u + guidance * (pred_c - pred_u)
            latents = sched.step(pred, t, latents).prev_sample
    return fam.unpack(sd, latents)


def decode(sd: SD, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images, about [0, 1], not yet clamped (training clamps straight-through), with the VAE's
    own scaling, shift and (SDXL) per-channel statistics, as the pipelines decode."""
    cfg = sd.vae.config
    latents = latents.to(sd.vae.dtype)
    if cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
        mean, std = (
            torch.tensor(cfg[k], device=latents.device).view(1, -1, 1, 1) for k in ("latents_mean", "latents_std")
        )
        latents = latents * std.to(latents.dtype) / cfg.scaling_factor + mean.to(latents.dtype)
    else:
        latents = latents / cfg.scaling_factor + (cfg.get("shift_factor") or 0)
    return sd.vae.decode(latents).sample.float() / 2 + 0.5


def halved_after_out_of_memory(sd: SD, size: int, what: str) -> int:
    """Half of `size` after an out-of-memory error (called outside the except block, whose traceback held
    the activations): frees the cached blocks and says so."""
    if sd.device.type == "cuda":
        torch.cuda.empty_cache()
    warnings.warn(f"{what}; now {size // 2}", stacklevel=3)
    return size // 2


@torch.no_grad()
def generate(sd: SD, prompt, seeds: list[int], steps: int, guidance: float, batch_size: int) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] on the CPU, one per seed, for one prompt or one prompt per seed
    (several classes at once); batched, identical per seed to batch-1 generation (tests/test_batching.py),
    so running out of GPU memory halves the batch for the rest of the session and retries, with a warning."""
    prompts = [prompt] * len(seeds) if isinstance(prompt, str) else list(prompt)
    uncond1 = unconditional(sd)
    conds = {p: encode(sd, [p]) for p in dict.fromkeys(prompts)}
    out, i = [], 0
    while i < len(seeds):
        size = min(batch_size, sd.generate_limit or batch_size)
        chunk = seeds[i : i + size]
        try:
            latents = initial_noise(sd, seeds=chunk)
            cond = Prompt.cat([conds[p] for p in prompts[i : i + size]])
            uncond = None if uncond1 is None else uncond1.expand(len(chunk))
            latents = denoise(sd, latents, cond, uncond, steps, guidance)
            out.append(decode(sd, latents).clamp(0, 1).cpu())  # as the pipeline returns them
            i += len(chunk)
            continue
        except torch.cuda.OutOfMemoryError:
            if len(chunk) == 1:
                raise
        sd.generate_limit = halved_after_out_of_memory(
            sd, len(chunk), f"out of memory generating {len(chunk)} images at once"
        )
    return torch.cat(out)
