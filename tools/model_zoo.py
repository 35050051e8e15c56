"""Random-weight SDXL, SDXL-Turbo, SD3 and FLUX.1 pipelines, built from configs and saved in the
diffusers hub layout, so tests load them with `DiffusionPipeline.from_pretrained(folder)` exactly as
a user loads a hub model, without the hub.

    python tools/model_zoo.py sdxl out/tiny_sdxl      # then: python run.py --sd_model out/tiny_sdxl ... (README)

Tiny sizes (`shape="tiny"`) are those diffusers' own pipeline tests use for their dummy components
(UNet / transformer, VAE, scheduler, CLIP text configs; T5 with the sizes of transformers' T5 model
tests), with these deliberate departures, so that tests can see what real checkpoints do:
- Tokenizers are built offline (the tests' hub tokenizers are unreachable) and hold the prompt templates,
  "a" and the caller's class words as single tokens; every CLIP encoder shares one BPE vocabulary, as
  CLIP-L and OpenCLIP-G do. CLIP encoders have 3 layers (SDXL and SD3 read the penultimate one).
- CLIP-G is wider than CLIP-L (48 vs 32, projection_dim = hidden as in the real encoders), so a test can
  tell the two encoders' rows and pooled vectors apart; its tokenizer pads with "!" (id 0), as the second
  SDXL/SD3 tokenizer does.
- `legacy_eos` writes `eos_token_id=2`, as the real SDXL/SD3/FLUX CLIP configs do: transformers' CLIP then
  pools at `input_ids.argmax(-1)`, an added token's id, not the end of text (docs/pipelines.md).
- T5 is 96 wide (SD3 pads the CLIP concat to the T5 width, 768 + 1280 -> 4096 in SD3; a narrower T5 would
  crop it) and keeps spare embedding rows beyond the tokenizer, as T5-XXL has 32128 rows for 32100 entries.
- SDXL's VAE has SDXL's scaling factor 0.13025 (SD 1.x's is 0.18215), so code that hard-codes the latter
  shows. SDXL-Turbo: the same models with trailing timestep spacing; FLUX.1 schedulers as schnell's (static
  shift 1) and dev's (dynamic shifting, the pipeline's default shift line).
- Sizes suit the project's 16-px classifier: SDXL and SD3 default to 16-px images (FluxPipeline fixes its
  default at 128 px: pass height/width), FLUX's 16 px is a multiple of 2 * vae_scale_factor.

Real sizes (`shape="real"`, for bench.py, whose costs do not depend on the weights) are the released
models' configs: stabilityai/stable-diffusion-xl-base-1.0 and stabilityai/sdxl-turbo (UNet, VAE with
force_upcast and scaling 0.13025, CLIP-L as text_encoder and OpenCLIP-bigG with its projection as
text_encoder_2), black-forest-labs/FLUX.1-schnell and FLUX.1-dev (transformer with 19 double and 38 single
blocks, guidance embedding in dev only; 16-channel VAE with scaling 0.3611 and shift 0.1159; CLIP-L; the
T5-XXL encoder of google/t5-v1_1-xxl). The embedding tables have the real rows (CLIP 49408: the tokenizer's
vocabulary is padded with entries no text reaches, as bench.py pads SD 1.4's; T5 32128); the tokenizers are
otherwise the tiny offline ones. tests/test_model_zoo.py counts the parameters on the meta device against
the released models' counts.
"""

import json
import string
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/model_zoo.py` from anywhere

from prompt_datasets import TEMPLATES  # noqa: E402

FAMILY_VARIANTS = ("sdxl", "sdxl-turbo", "sd3", "flux-schnell", "flux-dev")
REAL_VARIANTS = ("sdxl", "sdxl-turbo", "flux-schnell", "flux-dev")  # no real-size SD3: bench.py does not time it
CLIP_L, CLIP_G, T5_WIDTH = 32, 48, 96  # tiny hidden sizes; CLIP_L + CLIP_G < T5_WIDTH as in SD3
T5_SPARE_ROWS = 4  # tiny T5: embedding rows no token uses, like T5-XXL's 28
TINY_PX = 16
# SD3's and FLUX's test VAE: one block (latent = image size), no quant convolutions, shifted latents
FLOW_VAE = dict(
    block_out_channels=(4,),
    layers_per_block=1,
    norm_num_groups=1,
    use_quant_conv=False,
    use_post_quant_conv=False,
    shift_factor=0.0609,
    scaling_factor=1.5035,
)


def _clip(hidden: int, intermediate: int, layers: int, heads: int, act: str) -> dict:
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        hidden_act=act,
    )


# The sizes of each shape ("real": the released models' configs, see above). Derived sizes (cross-attention
# and pooled widths, the UNet's added-embedding input) follow from the text encoders' widths in the builders.
SIZES = {
    "tiny": dict(
        clip_rows=None,  # the tokenizer's own size
        clip_l=_clip(CLIP_L, 37, 3, 4, "gelu"),
        clip_g=_clip(CLIP_G, 37, 3, 4, "gelu"),
        t5=dict(d_model=T5_WIDTH, d_ff=37, d_kv=8, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
        unet=dict(
            block_out_channels=(2, 4),
            layers_per_block=2,
            sample_size=TINY_PX // 2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            norm_num_groups=1,
        ),
        time_dim=8,  # the width of each of SDXL's six micro-conditioning numbers
        sdxl_vae=dict(block_out_channels=(32, 64), sample_size=TINY_PX),
        flux=dict(
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            axes_dims_rope=(4, 4, 8),
        ),
        flux_vae=dict(FLOW_VAE, latent_channels=1, sample_size=TINY_PX),
    ),
    "real": dict(
        clip_rows=49408,
        clip_l=_clip(768, 3072, 12, 12, "quick_gelu"),
        clip_g=_clip(1280, 5120, 32, 20, "gelu"),
        t5=dict(
            d_model=4096,
            d_ff=10240,
            d_kv=64,
            num_layers=24,
            num_heads=64,
            relative_attention_num_buckets=32,
            feed_forward_proj="gated-gelu",
            vocab_size=32128,
        ),
        unet=dict(
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10),
        ),
        time_dim=256,
        sdxl_vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024),
        flux=dict(
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            axes_dims_rope=(16, 56, 56),
        ),
        flux_vae=dict(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
            sample_size=1024,
        ),
    ),
}


def build(variant: str, folder, words: list[str] | None = None, legacy_eos: bool = True) -> Path:
    """Build the tiny `variant` pipeline (seeded: the same call gives the same weights), save it to
    `folder` with `save_pretrained` and return the folder. `words` (e.g. class names) become single
    tokens in every tokenizer, beside the prompt templates' words and "a"."""
    folder = Path(folder)
    pipeline(variant, words, legacy_eos).save_pretrained(folder)
    _name_fast_t5_tokenizer(folder / "model_index.json")
    return folder


def pipeline(
    variant: str,
    words: list[str] | None = None,
    legacy_eos: bool = True,
    shape: str = "tiny",
    device="cpu",
    dtype: torch.dtype = torch.float32,
):
    """The `variant` pipeline in memory, seeded, at `shape` "tiny" or "real" (REAL_VARIANTS only). Parameters
    are created on `device` (e.g. "cuda", or "meta" to count them), the denoiser's in `dtype` and the rest in
    fp32 (diffusion.load_sd keeps the text encoders in fp32 and decides the VAE's dtype): a real FLUX.1 built
    in fp32 on the CPU first would need 68 GB of host memory and minutes of initialisation."""
    variants = REAL_VARIANTS if shape == "real" else FAMILY_VARIANTS
    if shape not in SIZES or variant not in variants:
        raise ValueError(f"unknown variant {variant!r} at shape {shape!r}; choose one of {variants}")
    texts = [t.format("") for t in TEMPLATES] + ["a", *(words or [])]
    sizes = SIZES[shape]

    def on(denoiser: bool = False):
        return _creating(device, dtype if denoiser else torch.float32)

    torch.manual_seed(0)
    family = variant.split("-")[0]
    if family == "sdxl":
        return _sdxl(texts, sizes, legacy_eos, on, turbo=variant == "sdxl-turbo")
    if family == "sd3":
        return _sd3(texts, sizes, legacy_eos, on)
    return _flux(texts, sizes, legacy_eos, on, dev=variant == "flux-dev")


@contextmanager
def _creating(device, dtype: torch.dtype):
    """Modules created inside get their parameters on `device` in `dtype` directly."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _sdxl(texts: list[str], s: dict, legacy_eos: bool, on, turbo: bool):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok_l, tok_g = _clip_tokenizer(texts, s["clip_rows"]), _clip_tokenizer(texts, s["clip_rows"], pad="!")
    width_l, width_g = s["clip_l"]["hidden_size"], s["clip_g"]["hidden_size"]
    with on(denoiser=True):
        unet = UNet2DConditionModel(
            **s["unet"],
            in_channels=4,
            out_channels=4,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=s["time_dim"],
            # six micro-conditioning numbers (sizes, crop) of time_dim each, then CLIP-G's pooled vector
            projection_class_embeddings_input_dim=6 * s["time_dim"] + width_g,
            cross_attention_dim=width_l + width_g,
        )
    spacing = "trailing" if turbo else "leading"
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing=spacing
    )
    with on():
        vae = _vae(**s["sdxl_vae"], latent_channels=4, scaling_factor=0.13025)
        text_encoder = CLIPTextModel(_clip_config(tok_l, s["clip_l"], legacy_eos))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tok_g, s["clip_g"], legacy_eos))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tok_l,
        tokenizer_2=tok_g,
        unet=unet,
        scheduler=sched,
    )


def _sd3(texts: list[str], s: dict, legacy_eos: bool, on):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tok_l, tok_g, tok_t5 = _clip_tokenizer(texts), _clip_tokenizer(texts, pad="!"), _t5_tokenizer(texts)
    with on(denoiser=True):
        transformer = SD3Transformer2DModel(
            sample_size=TINY_PX,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=T5_WIDTH,
            pooled_projection_dim=CLIP_L + CLIP_G,
            out_channels=4,
        )
    with on():
        vae = _vae(**FLOW_VAE, latent_channels=4, sample_size=TINY_PX)
        text_encoder = CLIPTextModelWithProjection(_clip_config(tok_l, s["clip_l"], legacy_eos))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tok_g, s["clip_g"], legacy_eos))
        text_encoder_3 = _t5_encoder(tok_t5, s["t5"])
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok_l,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tok_g,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tok_t5,
    )


def _flux(texts: list[str], s: dict, legacy_eos: bool, on, dev: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tok_l, tok_t5 = _clip_tokenizer(texts, s["clip_rows"]), _t5_tokenizer(texts)
    with on(denoiser=True):
        transformer = FluxTransformer2DModel(
            **s["flux"],
            patch_size=1,
            joint_attention_dim=s["t5"]["d_model"],
            pooled_projection_dim=s["clip_l"]["hidden_size"],
            guidance_embeds=dev,
        )
    shift = dict(shift=3.0, use_dynamic_shifting=True) if dev else dict(shift=1.0, use_dynamic_shifting=False)
    sched = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15, **shift
    )
    with on():
        vae = _vae(**s["flux_vae"])
        text_encoder = CLIPTextModel(_clip_config(tok_l, s["clip_l"], legacy_eos))
        text_encoder_2 = _t5_encoder(tok_t5, s["t5"])
    return FluxPipeline(
        scheduler=sched,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok_l,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tok_t5,
        transformer=transformer,
    )


def _vae(block_out_channels, **config):
    """An AutoencoderKL: one encoder/decoder block per entry of `block_out_channels` (x2 downsampling
    between blocks, so the latent is 2**(len - 1) times smaller than the image)."""
    from diffusers import AutoencoderKL

    blocks = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        **config,
    )


def _clip_tokenizer(texts: list[str], rows: int | None = None, pad: str | None = None):
    """A CLIP BPE tokenizer (77 positions) in which every word of `texts` is one token, built offline as
    bench.py builds SD 1.x's; `rows`: padded with entries no text reaches to this many (the real table's
    size); `pad` replaces the default pad token (EOS)."""
    from digits.tokenizer import build_vocab, clip_tokenizer

    vocab, merges = build_vocab(texts)
    if rows:
        vocab |= {f"<unused{i}>": i for i in range(len(vocab), rows)}
    tok = clip_tokenizer(vocab, merges, model_max_length=77)
    if pad is not None:
        tok.pad_token = pad
    return tok


def _clip_config(tok, sizes: dict, legacy_eos: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **sizes,
        vocab_size=len(tok),
        projection_dim=sizes["hidden_size"],
        max_position_embeddings=77,
        layer_norm_eps=1e-05,
        bos_token_id=tok.bos_token_id,
        eos_token_id=2 if legacy_eos else tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _t5_tokenizer(texts: list[str]):
    """A Unigram (sentencepiece-style) T5 tokenizer from `tokenizers` objects, which loads on transformers
    4.x and 5.x alike: <pad> 0, </s> 1, <unk> 2, then "▁word" for every whitespace-separated word of `texts`
    (case kept: T5 is case-sensitive) and the printable ASCII characters, so any text tokenizes. A word's
    piece scores -1 and any split into two or more pieces at most -2, so each word stays one token."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    words = dict.fromkeys(w for text in texts for w in text.split())
    chars = dict.fromkeys(c for c in string.printable if not c.isspace())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in words] + [(c, -5.0) for c in chars]
    tk = Tokenizer(Unigram(pieces, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace("▁", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0, model_max_length=512
    )


def _t5_encoder(tok, sizes: dict):
    """A T5 encoder; its table keeps rows beyond the tokenizer (`sizes` may give the real 32128)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        **{"vocab_size": len(tok) + T5_SPARE_ROWS} | sizes,
        dropout_rate=0.0,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    return T5EncoderModel(config)


def _name_fast_t5_tokenizer(model_index: Path) -> None:
    """transformers 5 saves the T5 tokenizer as "T5Tokenizer", which in 4.x is the slow class that needs a
    spiece.model this folder does not have; "T5TokenizerFast" loads from tokenizer.json in both."""
    index = json.loads(model_index.read_text())
    for name, entry in index.items():
        if entry == ["transformers", "T5Tokenizer"]:
            index[name] = ["transformers", "T5TokenizerFast"]
    model_index.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Build a tiny random-weight pipeline of one family.")
    p.add_argument("variant", choices=FAMILY_VARIANTS)
    p.add_argument("folder")
    p.add_argument("--words", nargs="*", default=[], help="class words that must be single tokens")
    a = p.parse_args()
    print(build(a.variant, a.folder, a.words))
