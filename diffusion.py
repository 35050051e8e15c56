"""Stable Diffusion side: loading, the class token S_c, prompt encoding, the one denoising
helper used by training and generation, decoding."""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from utils import UsageError, hub_guard


@dataclass
class SD:
    pipe: "object"  # the diffusers StableDiffusionPipeline (kept for save_as_full_pipeline)
    token: nn.Parameter  # S_c's embedding in slot 0, used by evaluation and generation (fp32)
    slot_ids: list[int]  # token ids of the placeholder slots: slot 0 is S_c, the others serve runs trained together
    values: list[torch.Tensor]  # what each slot's id embeds to; training puts each run's own parameter here
    init_embedding: torch.Tensor  # the initializer token's embedding, to restart each class from
    device: torch.device
    dtype: torch.dtype  # UNet / VAE dtype
    height: int  # image size in pixels
    width: int

    def __getattr__(self, name):  # sd.unet, sd.vae, sd.tokenizer, sd.text_encoder, sd.scheduler
        return getattr(self.pipe, name)

    @property
    def token_id(self) -> int:
        return self.slot_ids[0]

    def slot_word(self, k: int) -> str:
        """The placeholder word of slot k, as it is written in a prompt."""
        return self.tokenizer.convert_ids_to_tokens(self.slot_ids[k])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents for the configured image size, from the models' configs."""
        f = self.pipe.vae_scale_factor
        return self.unet.config.in_channels, self.height // f, self.width // f


def load_sd(
    model: str,
    device,
    dtype,
    size: tuple[int, int],
    placeholder: str,
    initializer: str,
    slots: int = 1,
    safety_checker: bool = False,
) -> SD:
    """The pipeline with S_c added (`slots` placeholder words: `placeholder`, then `placeholder`1, 2, ... for
    runs trained together), frozen, in the run's dtype. `safety_checker`: keep the model's own, if it has one
    (the original's evaluation did, docs/original.md §6)."""
    from diffusers import StableDiffusionPipeline

    with hub_guard(f"Stable Diffusion model {model}"):
        no_checker = {} if safety_checker else dict(safety_checker=None, requires_safety_checker=False)
        pipe = StableDiffusionPipeline.from_pretrained(model, **no_checker)
    pipe.set_progress_bar_config(disable=True)
    # Frozen: UNet and VAE in half precision on GPU, the text encoder in fp32 (docs/original.md §3).
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False).eval()
    pipe.unet.to(device, dtype)
    pipe.vae.to(device, dtype)
    pipe.text_encoder.to(device)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker.requires_grad_(False).eval().to(device)

    tok = pipe.tokenizer
    words = [placeholder] + [f"{placeholder}{k}" for k in range(1, slots)]
    if any(w in tok.get_vocab() for w in words) or tok.add_tokens(words) != len(words):
        raise UsageError(f"--placeholder_token {placeholder!r}: already in the vocabulary; choose a new word")
    init_ids = tok.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        tok_list = tok.convert_ids_to_tokens(init_ids)
        raise UsageError(f"--initializer_token {initializer!r}: must be one token, the tokenizer gives {tok_list}")
    slot_ids = tok.convert_tokens_to_ids(words)
    # resize_token_embeddings fills new rows randomly; the rows are overwritten (and the hook below
    # supplies each slot's value anyway).
    pipe.text_encoder.resize_token_embeddings(len(tok), mean_resizing=False)
    emb = pipe.text_encoder.get_input_embeddings()
    init = emb.weight[init_ids[0]].detach().float().clone()
    token = nn.Parameter(init.clone())
    values = [token] + [init.clone() for _ in words[1:]]

    def inject(_module, inputs, out):
        # Only the slots' values are trained tensors: no weight decay or update can touch the rest of
        # the vocabulary (docs/original.md §7.2).
        for tid, value in zip(slot_ids, values):
            out = torch.where((inputs[0] == tid).unsqueeze(-1), value.to(out.dtype), out)
        return out

    emb.register_forward_hook(inject)
    sd = SD(pipe, token, slot_ids, values, init, device, dtype, *size)
    for k in range(slots):
        set_token(sd, init, k)
    for flag, v in (("height", sd.height), ("width", sd.width)):
        if v % pipe.vae_scale_factor:
            raise UsageError(f"--{flag} {v}: this model's VAE needs a multiple of {pipe.vae_scale_factor}")
    return sd


def configure(sd: SD, gradient_checkpointing: bool, compile: bool = False) -> None:
    """The run's model settings: checkpointing of UNet and VAE activations (used only in the
    gradient steps, see `checkpointing_mode`), and torch.compile of the UNet in place (the
    pipeline keeps its UNet object)."""
    for m in (sd.unet, sd.vae):
        m.enable_gradient_checkpointing() if gradient_checkpointing else m.disable_gradient_checkpointing()
    if compile:
        sd.unet.compile()


@contextmanager
def precision(sd: SD, dtype: torch.dtype):
    """UNet and VAE in `dtype` for a while (fp16 -> fp32 -> fp16 is exact), e.g. the original's fp32
    evaluation of its fp16-trained pipeline (docs/original.md §6)."""
    old = sd.dtype
    sd.unet.to(dtype), sd.vae.to(dtype)
    sd.dtype = dtype
    try:
        yield
    finally:
        sd.unet.to(old), sd.vae.to(old)
        sd.dtype = old


def safety_checked(sd: SD, images: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] through the model's safety checker, when it has one: a flagged image
    comes back black (and counts as wrong), as in the original's evaluation (docs/original.md §6)."""
    if getattr(sd.pipe, "safety_checker", None) is None:
        return images
    device = next(sd.pipe.safety_checker.parameters()).device
    pil = sd.pipe.image_processor.numpy_to_pil(images.permute(0, 2, 3, 1).float().numpy())
    clip_input = sd.pipe.feature_extractor(pil, return_tensors="pt").pixel_values.to(device)
    checked, _ = sd.pipe.safety_checker(images=images.clone(), clip_input=clip_input)
    return checked


@contextmanager
def checkpointing_mode(sd: SD):
    """Train mode for the checkpointed models during a gradient step. Older diffusers (0.30, say)
    checkpoint only when `module.training` is true, newer ones when grad is enabled; the original
    kept `unet.train()` "to enable gradient checkpointing". SD's UNet and VAE have no batch norm
    and every dropout module stays in eval mode, so only rounding can change (diffusers makes a
    tensor contiguous in train mode; tested). Generation stays in eval mode."""
    models = [m for m in (sd.unet, sd.vae) if m.is_gradient_checkpointing]
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
    """Slot `slot` embeds to `value` (slot 0: S_c, whose parameter `sd.token` takes the value)."""
    with torch.no_grad():
        if slot == 0:
            sd.token.copy_(value)
            sd.values[0] = sd.token
        else:
            sd.values[slot] = value.detach().float().clone()
        sd.text_encoder.get_input_embeddings().weight[sd.slot_ids[slot]] = value.to(sd.text_encoder.dtype)


def encode(sd: SD, prompts: list[str], length: int | None = None, autocast: bool = False) -> torch.Tensor:
    """Prompt embeddings, padded to `length` tokens: by default the tokenizer's max length, as generation
    pads them (the original padded training prompts to the batch's longest: docs/original.md §7.4).
    `autocast`: the text encoder under fp16 autocast, as the original's accelerate-prepared encoder (§3)."""
    length = length or sd.tokenizer.model_max_length
    ids = sd.tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    with torch.autocast(sd.device.type, torch.float16, enabled=autocast):
        return sd.text_encoder(ids.input_ids.to(sd.device))[0].to(sd.dtype)


def longest_prompt(sd: SD, prompts: list[str]) -> int:
    """The number of tokens of the longest prompt (with start and end tokens)."""
    ids = sd.tokenizer(prompts, truncation=True, max_length=sd.tokenizer.model_max_length).input_ids
    return max(len(i) for i in ids)


def initial_noise(sd: SD, seeds: list[int] | None = None, n: int = 0, seed: int = 0) -> torch.Tensor:
    """Starting latents. With `seeds`: one CPU generator per image, exactly as the diffusers
    pipeline draws them for batch-1 calls, so batched generation reproduces per-seed images.
    Otherwise `n` latents from one generator seeded with `seed` (the training noises)."""
    shape = sd.latent_shape
    if seeds is not None:
        noise = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(s), dtype=sd.dtype) for s in seeds]
        noise = torch.cat(noise)
    else:
        noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=sd.dtype)
    return noise.to(sd.device) * sd.scheduler.init_noise_sigma


def denoise(sd: SD, latents, cond, uncond, steps: int, guidance: float, grad_steps: int = 0, callback=None):
    """Classifier-free guided sampling with the model's scheduler. "Gradient skipping"
    (docs/original.md §1): only the UNet calls from sampler step `steps - grad_steps`
    on build a graph, by the original's index rule over `scheduler.timesteps`
    (`i >= num_inference_steps - grad_steps`). PNDM with skip_prk_steps (SD 1.4) lists N+1
    timesteps for N steps, so grad_steps=1 opens two UNet calls there (t=34 and t=1 at 30 steps),
    as in the original; DDIM lists N, so one. Earlier calls run without gradient."""
    sched = sd.scheduler
    sched.set_timesteps(steps, device=sd.device)  # also resets multistep state (PNDM)
    context = torch.cat([uncond, cond])
    for i, t in enumerate(sched.timesteps):
        with torch.set_grad_enabled(grad_steps > 0 and i >= steps - grad_steps):
            ctx = context if torch.is_grad_enabled() else context.detach()
            x = sched.scale_model_input(torch.cat([latents] * 2), t)
            eps_u, eps_c = sd.unet(x, t, encoder_hidden_states=ctx).sample.chunk(2)
            out = sched.step(eps_u + guidance * (eps_c - eps_u), t, latents)
            latents = out.prev_sample
        if callback is not None:  # e.g. digits/investigate.py reads each step's predicted x0
            callback(i, t, out)
    return latents


def decode(sd: SD, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images, about [0, 1], not yet clamped (training clamps straight-through)."""
    return sd.vae.decode(latents / sd.vae.config.scaling_factor).sample.float() / 2 + 0.5


@torch.no_grad()
def generate(sd: SD, prompt, seeds: list[int], steps: int, guidance: float, batch_size: int) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] on the CPU, one per seed, for one prompt or one prompt per seed
    (several classes at once); batched, identical per seed to batch-1 generation (tests/test_batching.py)."""
    prompts = [prompt] * len(seeds) if isinstance(prompt, str) else list(prompt)
    uncond1 = encode(sd, [""])
    conds = {p: encode(sd, [p]) for p in dict.fromkeys(prompts)}
    out = []
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i : i + batch_size]
        latents = initial_noise(sd, seeds=chunk)
        cond = torch.cat([conds[p] for p in prompts[i : i + batch_size]])
        latents = denoise(sd, latents, cond, uncond1.expand(len(chunk), -1, -1), steps, guidance)
        out.append(decode(sd, latents).clamp(0, 1).cpu())  # as the pipeline returns them
    return torch.cat(out)
