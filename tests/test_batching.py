"""Batching changes the speed, not the math (docs/performance.md):

(a) the epoch's images as one micro-batch give the same token gradient as the original's batch-1
    gradient accumulation (each loss / epoch_size backpropagated and summed);
(b) batched generation gives, per seed, the images of batch-1 generation and of the plain diffusers
    StableDiffusionPipeline called with that seed.
Tolerances are for fp32 on a CPU, where only the order of floating-point reductions differs.
"""

import pytest
import torch

from classifiers import load_classifier
from config import RunConfig
from diffusion import generate, initial_noise, load_sd
from prompt_datasets import PromptDataset
from train import train_step

# Measured noise (1 and 2 threads): the gradients differ by at most 1.9e-6 of the largest component, the
# images by at most 6.3e-7; the tolerances leave a factor of 16 or more for other CPUs' reduction orders.
GRAD_RTOL = 1e-4  # relative to the largest gradient component
IMAGE_ATOL = 1e-5  # images in [0, 1]


def _sd(tiny):
    return load_sd(
        tiny["sd"], torch.device("cpu"), torch.float32, size=(16, 16), placeholder="newclas", initializer="a"
    )


def _token_grad(sd, clf, cfg, prompts, noise, micro_batch: int) -> torch.Tensor:
    sd.token.grad = None
    for s in range(0, cfg.epoch_size, micro_batch):
        loss, _, _ = train_step(sd, clf, prompts[s : s + micro_batch], noise[s : s + micro_batch], 1, cfg)
        (loss.sum() / cfg.epoch_size).backward()
    return sd.token.grad.clone()


@pytest.mark.parametrize("grad_steps, checkpointing", [(1, False), (2, False), (2, True)])
def test_batched_step_gives_the_accumulated_gradient(tiny, grad_steps, checkpointing):
    cfg = RunConfig(
        sd_model=tiny["sd"],
        classifier=tiny["clf"],
        device="cpu",
        height=16,
        width=16,
        num_of_SD_inference_steps=3,
        epoch_size=4,
        grad_steps=grad_steps,
        number_of_prompts=3,
    ).finalize()
    sd, clf = _sd(tiny), load_classifier(tiny["clf"])
    if checkpointing:
        sd.unet.enable_gradient_checkpointing()
        sd.vae.enable_gradient_checkpointing()
    dataset = PromptDataset(cfg.placeholder_token, "tiger cat", cfg.number_of_prompts, cfg.epoch_size)
    prompts = dataset.epoch(cfg.seed, 0)
    assert len(set(prompts)) > 1  # different prompts in one batch: padding must not change them
    noise = initial_noise(sd, n=cfg.epoch_size, seed=cfg.seed)
    batched = _token_grad(sd, clf, cfg, prompts, noise, micro_batch=4)
    sequential = _token_grad(sd, clf, cfg, prompts, noise, micro_batch=1)
    scale = sequential.abs().max()
    assert scale > 0 and torch.isfinite(scale)
    assert (batched - sequential).abs().max() <= GRAD_RTOL * scale


def test_batched_generation_matches_batch_one_and_diffusers(tiny):
    from diffusers import StableDiffusionPipeline

    sd = _sd(tiny)
    prompt, seeds, steps, guidance = "A photo of a tiger cat", [0, 1, 2, 3, 4], 3, 5.0
    batched = generate(sd, prompt, seeds, steps, guidance, batch_size=3)  # chunks of 3 and 2
    single = generate(sd, prompt, seeds, steps, guidance, batch_size=1)
    assert batched.shape == (5, 3, 16, 16)
    torch.testing.assert_close(batched, single, rtol=0, atol=IMAGE_ATOL)

    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    reference = torch.cat(
        [
            pipe(
                prompt,
                generator=torch.Generator().manual_seed(s),
                num_inference_steps=steps,
                guidance_scale=guidance,
                output_type="pt",
                height=16,
                width=16,
            ).images
            for s in seeds
        ]
    )
    torch.testing.assert_close(batched, reference, rtol=0, atol=IMAGE_ATOL)
    assert not torch.equal(batched[0], batched[1])  # different seeds, different images


def test_generation_out_of_memory_halves_the_batch(tiny, monkeypatch):
    """A batch of more than 2 images runs out of memory: generation retries in halves, keeps the smaller
    batch for later calls, and gives the same images as batch 1."""
    import diffusion

    sd, real = _sd(tiny), diffusion.denoise

    def denoise(sd, latents, *rest):
        if len(latents) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(sd, latents, *rest)

    seeds = [0, 1, 2, 3, 4]
    single = generate(sd, "A photo of a tiger cat", seeds, 3, 5.0, batch_size=1)
    monkeypatch.setattr(diffusion, "denoise", denoise)
    with pytest.warns(UserWarning, match="out of memory generating 5 images at once; now 2"):
        halved = generate(sd, "A photo of a tiger cat", seeds, 3, 5.0, batch_size=8)
    torch.testing.assert_close(halved, single, rtol=0, atol=IMAGE_ATOL)
    assert sd.generate_limit == 2
    calls = []

    def always_out_of_memory(*args):
        calls.append(args)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(diffusion, "denoise", always_out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        generate(sd, "A photo of a tiger cat", [0], 3, 5.0, batch_size=1)
    assert len(calls) == 1  # a batch of 1 is not retried


def test_auto_micro_batch_is_balanced_and_fits(monkeypatch):
    """batch_size 0 on a GPU: as many images as the memory model allows, split evenly."""
    import torch

    from config import RunConfig
    from train import micro_batch_size

    cfg = RunConfig(batch_size=0, epoch_size=5).finalize()
    gib = 2**30
    for free, expected in ((80, 5), (20, 3), (12, 2), (6, 1)):  # 3.4 GiB per image + 4 GiB fixed
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free: (f * gib, 80 * gib))
        assert micro_batch_size(cfg, torch.device("cuda")) == expected, free
    assert micro_batch_size(cfg, torch.device("cpu")) == 5
    assert micro_batch_size(RunConfig(batch_size=2).finalize(), torch.device("cpu")) == 2
    assert micro_batch_size(cfg, torch.device("cpu"), runs=3, limit=4) == 4  # 15 images: 4 + 4 + 4 + 3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * gib, 80 * gib))
    assert micro_batch_size(cfg, torch.device("cuda"), runs=3) == 15
    assert micro_batch_size(cfg, torch.device("cuda"), runs=3, limit=4) == 4
