"""What differs between the pipeline families the project trains tokens for: which text encoders get a
row, how a prompt becomes the denoiser's input, the unconditional input, the timesteps, the denoiser's
call and the latents' layout. diffusion.py holds everything they share (one denoising loop for all).

Family          | pipeline (model_index.json `_class_name`) | text encoders (token-file keys)
SD 1.x / 2.x    | StableDiffusionPipeline                   | clip_l (the file keeps diffusers' one-key layout)
SDXL, -Turbo    | StableDiffusionXLPipeline                 | clip_l, clip_g
SD3, SD3.5      | StableDiffusion3Pipeline                  | clip_l, clip_g, t5xxl (optional in the model)
FLUX.1          | FluxPipeline                              | clip_l, t5xxl

Each family's loop follows its diffusers pipeline's `__call__` (which runs without gradient), so that with
no gradient steps the images are the pipeline's own (tests/test_families.py)."""

from dataclasses import dataclass, replace

import torch


@dataclass
class Prompt:
    """A batch of encoded prompts as the denoiser takes them."""

    embeds: torch.Tensor  # [B, S, D]: the cross-attention (UNet) or joint-attention (transformer) context
    pooled: torch.Tensor | None = None  # [B, P]: the pooled text vector (SDXL, SD3, FLUX)

    def _map(self, f) -> "Prompt":
        return replace(self, embeds=f(self.embeds), pooled=None if self.pooled is None else f(self.pooled))

    def expand(self, n: int) -> "Prompt":
        """A batch-1 prompt repeated n times (a view)."""
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    def detach(self) -> "Prompt":
        return self._map(torch.Tensor.detach)

    def to(self, dtype: torch.dtype) -> "Prompt":
        return self._map(lambda t: t.to(dtype))

    @staticmethod
    def cat(prompts: list["Prompt"]) -> "Prompt":
        pooled = None if prompts[0].pooled is None else torch.cat([p.pooled for p in prompts])
        return Prompt(torch.cat([p.embeds for p in prompts]), pooled)


class StableDiffusion:
    """SD 1.x / 2.x (and SD-Turbo, a distilled SD 2.1): one CLIP encoder, a UNet, classifier-free guidance
    above guidance 1 (as the pipeline: with guidance <= 1 the conditional pass alone, else a Turbo
    token would get no gradient)."""

    name = "SD 1.x/2.x"
    hub_tag = "stable-diffusion"  # the hub tag of a token's model card
    denoiser = "unet"
    encoders = (("text_encoder", "tokenizer", "clip_l"),)
    # The original's family: diffusers' one-tensor token file, the original's prompt padding and autocast,
    # and CLIP's pooled vector unused (so its legacy pooling needs no fix).
    classic = True
    vae_upcast = False  # keep the VAE in fp32 under fp16 when its config asks (`force_upcast`)
    safety_checker = "safety_checker"  # the pipeline's safety-checker component (None: the family has none)

    def encode(self, sd, prompts: list[str], length: int | None = None, autocast: bool = False) -> Prompt:
        """Padded to `length` tokens, by default the tokenizer's max length, as generation pads them (the
        original padded training prompts to the batch's longest: docs/original.md §7.4); `autocast`: the
        text encoder under fp16 autocast, as the original's accelerate-prepared encoder (§3)."""
        length = length or sd.tokenizer.model_max_length
        ids = sd.tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        with torch.autocast(sd.device.type, torch.float16, enabled=autocast):
            return Prompt(sd.text_encoder(ids.input_ids.to(sd.device))[0])

    def guided(self, sd, guidance: float) -> bool:
        return guidance > 1

    def uncond(self, sd, encode) -> Prompt | None:
        return encode([""])

    def noise_shape(self, sd) -> tuple[int, int, int]:
        f = sd.pipe.vae_scale_factor
        return sd.denoiser.config.in_channels, sd.height // f, sd.width // f

    def size_multiple(self, sd) -> int:
        return sd.pipe.vae_scale_factor

    def set_timesteps(self, sd, steps: int, latents: torch.Tensor) -> None:
        sd.scheduler.set_timesteps(steps, device=sd.device)  # also resets multistep state (PNDM)

    def pack(self, sd, latents: torch.Tensor) -> torch.Tensor:
        return latents

    unpack = pack

    def predict(self, sd, x: torch.Tensor, t, prompt: Prompt, guidance: float) -> torch.Tensor:
        return sd.unet(x, t, encoder_hidden_states=prompt.embeds).sample


class StableDiffusionXL(StableDiffusion):
    """SDXL (and SDXL-Turbo): two CLIP encoders' penultimate states side by side, the second's pooled
    vector and the size micro-conditioning as added inputs, zeros as the unconditional input when the
    model says `force_zeros_for_empty_prompt`."""

    name = "SDXL"
    hub_tag = "sdxl"
    encoders = (("text_encoder", "tokenizer", "clip_l"), ("text_encoder_2", "tokenizer_2", "clip_g"))
    classic = False
    vae_upcast = True  # SDXL's VAE overflows in fp16
    safety_checker = None

    def encode(self, sd, prompts: list[str], length=None, autocast=False) -> Prompt:
        embeds, _, pooled, _ = sd.pipe.encode_prompt(
            prompt=prompts, device=sd.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return Prompt(embeds, pooled)

    def uncond(self, sd, encode) -> Prompt | None:
        if sd.pipe.config.force_zeros_for_empty_prompt:  # zeros of the encoded prompts' shapes
            kw = dict(device=sd.device, dtype=sd.dtype)
            embeds = torch.zeros(1, sd.tokenizer.model_max_length, sd.unet.config.cross_attention_dim, **kw)
            return Prompt(embeds, torch.zeros(1, sd.text_encoder_2.config.projection_dim, **kw))
        return encode([""])

    def predict(self, sd, x, t, prompt: Prompt, guidance: float) -> torch.Tensor:
        # original size, crop corner, target size (the pipeline's defaults: the image size, no crop)
        time_ids = torch.tensor([[sd.height, sd.width, 0, 0, sd.height, sd.width]], dtype=x.dtype, device=x.device)
        added = {"text_embeds": prompt.pooled, "time_ids": time_ids.expand(len(x), -1)}
        return sd.unet(x, t, encoder_hidden_states=prompt.embeds, added_cond_kwargs=added).sample


class StableDiffusion3(StableDiffusion):
    """SD3 / SD3.5: two CLIP encoders and T5 in one joint-attention context, the CLIP pooled vectors,
    flow matching; the unconditional input is the encoded empty prompt."""

    name = "SD3"
    hub_tag = "sd3"
    denoiser = "transformer"
    classic = False
    safety_checker = None
    encoders = StableDiffusionXL.encoders + (("text_encoder_3", "tokenizer_3", "t5xxl"),)

    def encode(self, sd, prompts: list[str], length=None, autocast=False) -> Prompt:
        embeds, _, pooled, _ = sd.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=sd.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return Prompt(embeds, pooled)

    def set_timesteps(self, sd, steps: int, latents: torch.Tensor) -> None:
        kw = {}
        if sd.scheduler.config.get("use_dynamic_shifting", None):
            patch = sd.denoiser.config.patch_size
            kw["mu"] = _shift(sd, (latents.shape[-2] // patch) * (latents.shape[-1] // patch), max_shift=1.16)
        sd.scheduler.set_timesteps(steps, device=sd.device, **kw)

    def predict(self, sd, x, t, prompt: Prompt, guidance: float) -> torch.Tensor:
        return sd.transformer(
            hidden_states=x, timestep=t.expand(len(x)), encoder_hidden_states=prompt.embeds,
            pooled_projections=prompt.pooled,
        ).sample  # fmt: skip


class Flux(StableDiffusion):
    """FLUX.1: T5 states as the context, CLIP-L's pooled vector, packed 2x2 latent patches, flow matching
    with the resolution-dependent shift; no classifier-free guidance (FLUX.1-dev takes the guidance
    scale as an input instead, one forward per step)."""

    name = "FLUX.1"
    hub_tag = "flux"
    denoiser = "transformer"
    classic = False
    safety_checker = None
    encoders = (("text_encoder", "tokenizer", "clip_l"), ("text_encoder_2", "tokenizer_2", "t5xxl"))

    def encode(self, sd, prompts: list[str], length=None, autocast=False) -> Prompt:
        embeds, pooled, _text_ids = sd.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=sd.device, num_images_per_prompt=1
        )
        return Prompt(embeds, pooled)

    def guided(self, sd, guidance: float) -> bool:
        return False

    def uncond(self, sd, encode) -> Prompt | None:
        return None

    def noise_shape(self, sd) -> tuple[int, int, int]:
        f = self.size_multiple(sd)  # the pipeline's latents: two per 2x2 patch of the VAE's downsampling
        return sd.denoiser.config.in_channels // 4, 2 * (sd.height // f), 2 * (sd.width // f)

    def size_multiple(self, sd) -> int:
        # From the VAE's config: diffusers 0.31 counts the FLUX pipeline's `vae_scale_factor` differently.
        return 2 ** len(sd.vae.config.block_out_channels)

    def set_timesteps(self, sd, steps: int, latents: torch.Tensor) -> None:
        import numpy as np

        sigmas = np.linspace(1.0, 1 / steps, steps)
        if sd.scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        mu = _shift(sd, latents.shape[1], max_shift=1.15)  # packed: one token per 2x2 patch
        sd.scheduler.set_timesteps(steps, device=sd.device, sigmas=sigmas, mu=mu)

    def pack(self, sd, latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        return sd.pipe._pack_latents(latents, b, c, h, w)

    def unpack(self, sd, latents: torch.Tensor) -> torch.Tensor:
        return sd.pipe._unpack_latents(latents, sd.height, sd.width, sd.pipe.vae_scale_factor)

    def predict(self, sd, x, t, prompt: Prompt, guidance: float) -> torch.Tensor:
        # The patches' position ids as the pipeline makes them (given latents, it draws nothing)
        _, img_ids = sd.pipe.prepare_latents(1, x.shape[-1] // 4, sd.height, sd.width, x.dtype, x.device, None, x[:1])
        txt_ids = torch.zeros(prompt.embeds.shape[1], 3, device=x.device, dtype=x.dtype)
        g = None
        if sd.denoiser.config.guidance_embeds:
            g = torch.full([len(x)], guidance, device=x.device, dtype=torch.float32)
        return sd.transformer(
            hidden_states=x, timestep=t.expand(len(x)).to(x.dtype) / 1000, guidance=g,
            pooled_projections=prompt.pooled, encoder_hidden_states=prompt.embeds, txt_ids=txt_ids, img_ids=img_ids,
        ).sample  # fmt: skip


def _shift(sd, image_seq_len: int, max_shift: float) -> float:
    """The flow-matching shift `mu` for this many image tokens, as the SD3 and FLUX pipelines compute it
    (a line through (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift))."""
    get = sd.scheduler.config.get
    base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
    base, top = get("base_shift", 0.5), get("max_shift", max_shift)
    m = (top - base) / (max_len - base_len)
    return image_seq_len * m + base - m * base_len


FAMILIES = {
    "StableDiffusionPipeline": StableDiffusion(),
    "StableDiffusionXLPipeline": StableDiffusionXL(),
    "StableDiffusion3Pipeline": StableDiffusion3(),
    "FluxPipeline": Flux(),
}
