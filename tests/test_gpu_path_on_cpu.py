"""The GPU-only code paths, run on the CPU with the tiny models: UNet and VAE in fp16 or bf16 with the
text encoder and classifier in fp32, the GradScaler, the fp32 evaluation of `--preset original`, the
automatic micro-batch from a GPU's free memory, and `--compile`. On the CPU `workspace.device_and_dtype`
always picks fp32, so these tests build the half-precision setup themselves; torch runs fp16 and bf16
on the CPU, and torch.amp.GradScaler("cpu") works there, so a dtype mismatch or a misused scaler fails
here rather than on a user's first GPU run."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_args

import train
from classifiers import load_classifier
from config import RunConfig, parse_args
from diffusion import configure, generate, initial_noise, load_sd, precision
from evaluate import eval_images
from workspace import load_classifiers, load_diffusion

CPU = torch.device("cpu")
TARGET = 2  # "crane" in conftest.LABELS
GiB = 2**30


def _cfg(tiny, tmp_path, *extra):
    """Three epochs of two images; no accuracy stop, so every run trains every epoch (the original's
    0.7 is hard-coded: `--preset original` keeps it)."""
    no_stop = [] if "original" in extra else ["--accuracy_stop", "1"]
    args = tiny_args(tiny, tmp_path, "--num_train_epochs", "3", *no_stop, *extra)
    return parse_args(args)


def _snapshot(*modules) -> list[dict]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _same(before: list[dict], after: list[dict]) -> bool:
    return all(
        a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
        for a, b in zip(before, after)
    )


def _train_two_runs(cfg, tmp_path, dtype):
    """Two runs (own classes and seeds) trained together, the models loaded as run.py loads them."""
    classifiers = load_classifiers(cfg, say_notes=False)
    sd = load_diffusion(cfg, classifiers, CPU, dtype)  # --candidates 2: two placeholder slots
    clf = classifiers["classifier"]
    frozen = _snapshot(sd.unet, sd.vae, sd.text_encoder, clf.model)
    runs = [
        train.new_run(cfg, sd, c, name, log_path=tmp_path / f"{c}.jsonl", img_dir=tmp_path / f"img{c}", seed=seed)
        for c, name, seed in ((TARGET, "crane", 35), (1, "tiger cat", 36))
    ]
    train.train_runs(cfg, sd, clf, runs, clf.labels)
    return sd, clf, runs, frozen


def _check_trained(sd, clf, runs, frozen, dtype):
    assert sd.unet.dtype == dtype and sd.vae.dtype == dtype and sd.dtype == dtype
    assert sd.text_encoder.dtype == torch.float32 and {p.dtype for p in clf.model.parameters()} == {torch.float32}
    assert _same(frozen, _snapshot(sd.unet, sd.vae, sd.text_encoder, clf.model)), "a frozen weight changed"
    for run in runs:
        assert len(run.log) == 3 and run.stop is None
        assert all(math.isfinite(e["loss"]) for e in run.log)
        for t in (run.token, run.kept):
            assert t.dtype == torch.float32 and torch.isfinite(t).all()
        assert not torch.equal(run.token.detach(), run.init)  # the token moved
        assert not torch.equal(run.kept, run.init) and run.kept_epoch is not None


def test_fp16_training_as_on_a_gpu(tiny, tmp_path):
    """UNet and VAE fp16, text encoder and classifier fp32, GradScaler at 2^16, checkpointing on (the
    GPU defaults): two runs train together; tokens fp32, finite, moved; the frozen models untouched."""
    cfg = _cfg(tiny, tmp_path, "--candidates", "2")
    assert cfg.gradient_checkpointing and cfg.loss_scale == 2.0**16
    sd, clf, runs, frozen = _train_two_runs(cfg, tmp_path, torch.float16)
    _check_trained(sd, clf, runs, frozen, torch.float16)
    for run in runs:
        assert run.scaler.is_enabled()
        scales = [e["loss_scale"] for e in run.log]
        assert scales[0] == 2.0**16
        for prev, entry in zip(run.log, run.log[1:]):  # halved only after a skipped step; no growth in 3 steps
            assert entry["loss_scale"] == prev["loss_scale"] / (2 if prev["skipped"] else 1)
        assert not all(e["skipped"] for e in run.log)
        assert all(e["grad_norm"] > 0 for e in run.log if not e["skipped"])
    assert not torch.equal(runs[0].kept, runs[1].kept)  # each run its own token


def _gradient_run(sd, clf, cfg, folder):
    """A new run's first epoch gradient, as training computes it (train.epoch_pass), in one forward."""
    run = train.new_run(
        cfg, sd, TARGET, "crane", log_path=folder / "train_log.jsonl", img_dir=folder / "train", seed=cfg.seed
    )
    [(loss, _, _)] = train.epoch_pass(cfg, sd, clf, [run], 0, clf.labels, cfg.epoch_size)
    assert math.isfinite(loss) and run.token.grad.dtype == torch.float32
    return run


def test_fp16_token_gradient_agrees_with_fp32(tiny, tmp_path):
    """Same prompts and noise (each run draws it in its model's dtype: the fp32 values, rounded): the fp16
    gradient, computed at the loss scale and unscaled by the scaler as `update_token` does, is the fp32
    gradient (measured cosine 0.999998, norm ratio 0.9985)."""
    cfg = _cfg(tiny, tmp_path)
    clf = load_classifier(tiny["clf"], "auto")
    full = load_sd(tiny["sd"], CPU, torch.float32, size=(16, 16), placeholder="newclas", initializer="a")
    half = load_sd(tiny["sd"], CPU, torch.float16, size=(16, 16), placeholder="newclas", initializer="a")
    run32 = _gradient_run(full, clf, cfg, tmp_path / "fp32")
    assert not run32.scaler.is_enabled()
    g32 = run32.token.grad.detach().clone()
    run16 = _gradient_run(half, clf, cfg, tmp_path / "fp16")
    scaler = run16.scaler
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16
    scaled = run16.token.grad.detach().clone()
    assert torch.isfinite(scaled).all() and g32.norm() > 0
    assert scaled.norm() / g32.norm() == pytest.approx(2.0**16, rel=0.02)  # the scale was applied
    update = train.update_token(run16.opt, scaler, run16.token, cfg.max_grad_norm, 1.0)
    assert update["loss_scale"] == 2.0**16 and not update["skipped"] and scaler.get_scale() == 2.0**16
    g16 = run16.token.grad.detach()  # unscaled in place by the scaler (no clip: the norm is far below 1)
    assert torch.equal(g16, scaled / 2.0**16)
    cosine = F.cosine_similarity(g16.double(), g32.double(), dim=0).item()
    assert cosine > 0.999, cosine
    assert g16.norm() / g32.norm() == pytest.approx(1.0, abs=0.02)
    assert update["grad_norm"] == pytest.approx(g16.norm().item(), rel=1e-5)


def test_bf16_training_and_evaluation(tiny, tmp_path):
    """bf16: no loss scale (unless the original's clip asks for one); the runs train; evaluation gives
    fp32 images in [0, 1]."""
    cfg = _cfg(tiny, tmp_path, "--candidates", "2")
    sd, clf, runs, frozen = _train_two_runs(cfg, tmp_path, torch.bfloat16)
    _check_trained(sd, clf, runs, frozen, torch.bfloat16)
    for run in runs:
        assert not run.scaler.is_enabled() and {e["loss_scale"] for e in run.log} == {1.0}
        assert not any(e["skipped"] for e in run.log)
    assert train.make_scaler(sd, _cfg(tiny, tmp_path, "--preset", "original")).is_enabled()
    seeds = [0, 1, 2]
    images = eval_images(cfg, sd, "A photo of newclas crane", seeds)
    assert images.dtype == torch.float32 and images.shape == (3, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    assert sd.unet.dtype == torch.bfloat16  # evaluation did not change the model's precision


def test_original_evaluation_generates_fp32_and_restores_fp16(tiny, tmp_path):
    """--preset original evaluates an fp16-trained pipeline in fp32 (diffusion.precision); fp16 -> fp32
    -> fp16 leaves the weights bit-identical, also when generation fails inside."""
    cfg = _cfg(tiny, tmp_path, "--preset", "original")
    assert cfg.eval_as_original
    sd = load_sd(tiny["sd"], CPU, torch.float16, size=(16, 16), placeholder="newclas", initializer="a")
    weights = _snapshot(sd.unet, sd.vae)
    seen = []
    sd.unet.register_forward_pre_hook(lambda _m, args: seen.append((sd.unet.dtype, args[0].dtype)))
    prompt, seeds = "A photo of newclas crane", [0, 1]
    images = eval_images(cfg, sd, prompt, seeds)
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert images.dtype == torch.float32 and images.shape == (2, 3, 16, 16)
    assert sd.dtype == sd.unet.dtype == sd.vae.dtype == torch.float16
    assert _same(weights, _snapshot(sd.unet, sd.vae))
    seen.clear()
    half = generate(sd, prompt, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
    assert set(seen) == {(torch.float16, torch.float16)}
    assert not torch.equal(half, images) and (half - images).abs().max() < 0.05  # fp16 rounding only
    with pytest.raises(RuntimeError, match="inside"), precision(sd, torch.float32):
        assert sd.dtype == sd.unet.dtype == torch.float32
        raise RuntimeError("inside")
    assert sd.dtype == sd.unet.dtype == sd.vae.dtype == torch.float16
    assert _same(weights, _snapshot(sd.unet, sd.vae))


def _gib_per_image(cfg) -> float:
    """docs/performance.md's memory model, written out: GiB per image at 512 px (3.4 with checkpointing,
    4.4 without), times the pixels, plus 10% per gradient step beyond the first."""
    at_512 = 3.4 if cfg.gradient_checkpointing else 4.4
    return at_512 * (cfg.height * cfg.width / 512**2) * (1 + 0.1 * (cfg.grad_steps - 1))


# (free GiB, runs, overrides, expected images per forward), worked out by hand from the memory model:
# usable = 0.9 x free - 4 GiB; fits = floor(usable / per image), at least 1, at most the images of the
# epoch (epoch_size x runs); then the fewest forwards, balanced.
AUTO = [
    (80, 1, {}, 5),  # 68 / 3.4 = 20 -> the whole epoch
    (13, 1, {}, 2),  # 7.7 / 3.4 = 2.3 -> 2: 2 + 2 + 1
    (80, 3, {}, 15),  # 20 fit: the 15 images of three runs in one forward
    (40, 3, {}, 8),  # 32 / 3.4 = 9.4 -> 9 fit: 2 forwards, 8 + 7
    (24, 3, {}, 5),  # 17.6 / 3.4 = 5.2 -> 5: 3 forwards of 5
    (16, 3, {}, 3),  # 10.4 / 3.4 = 3.06 -> 3: 5 forwards of 3
    (8, 3, {}, 1),  # 3.2 / 3.4 < 1: still one image at a time
    (2, 3, {}, 1),  # less than the fixed 4 GiB
    (20, 1, dict(gradient_checkpointing=False), 3),  # 14 / 4.4 = 3.2 -> 3: 3 + 2
    (40, 3, dict(grad_steps=3), 5),  # 32 / 4.08 = 7.8 -> 7: 3 forwards of 5
    (24, 3, dict(height=256, width=256), 15),  # 17.6 / 0.85 = 20.7
    (6, 2, dict(height=256, width=256, epoch_size=4), 1),  # 1.4 / 0.85 = 1.6 -> 1: 8 forwards of 1
]


@pytest.mark.parametrize("free, runs, overrides, expected", AUTO)
def test_auto_micro_batch_from_free_memory(monkeypatch, free, runs, overrides, expected):
    cfg = RunConfig(**dict(batch_size=0, epoch_size=5) | overrides).finalize()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free * GiB, 141 * GiB))
    got = train.micro_batch_size(cfg, torch.device("cuda"), runs)
    assert got == expected
    total = cfg.epoch_size * runs
    fits = max(1, math.floor((0.9 * free - 4) / _gib_per_image(cfg)))
    assert got <= fits  # no forward holds more than the model allows
    assert math.ceil(total / got) == math.ceil(total / min(fits, total))  # the fewest forwards
    forwards = [min(got, total - s) for s in range(0, total, got)]
    assert max(forwards) - min(forwards) < len(forwards)  # balanced: 3 + 2, not 4 + 1; 8 + 7, not 9 + 6


@pytest.mark.parametrize("batch_size, runs, expected", [(2, 1, 2), (2, 3, 6), (7, 3, 15), (5, 2, 10)])
def test_given_batch_size_counts_one_runs_images(monkeypatch, batch_size, runs, expected):
    """An explicit batch_size never reads the GPU's memory; with several runs forwards hold that many of each."""

    def no_memory_reading(device=None):
        raise AssertionError("batch_size is given: free memory must not be read")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_memory_reading)
    cfg = RunConfig(batch_size=batch_size, epoch_size=5).finalize()
    assert train.micro_batch_size(cfg, torch.device("cuda"), runs) == expected
    assert train.micro_batch_size(cfg, CPU, runs) == expected


@pytest.mark.slow  # inductor compiles the graphs: about 6.5 min cold on a shared 2-core CPU (23 s cache-warm)
def test_compiled_unet_gives_the_same_gradient_and_images(tiny, tmp_path):
    """--compile (torch.compile of the UNet in place) on the CPU: the same token gradient and images
    (measured: gradient within 3e-10 of a largest component 1.7e-4, images within 6e-7)."""
    cfg = _cfg(tiny, tmp_path)
    clf = load_classifier(tiny["clf"], "auto")
    sd = load_sd(tiny["sd"], CPU, torch.float32, size=(16, 16), placeholder="newclas", initializer="a")

    def once():
        grad = _gradient_run(sd, clf, cfg, tmp_path).token.grad.detach().clone()
        images = generate(sd, "A photo of newclas crane", [0, 1], cfg.eval_steps, cfg.eval_guidance_scale, 2)
        return grad, images

    configure(sd, False)
    eager_grad, eager_images = once()
    unet = sd.unet
    configure(sd, False, compile=True)
    assert sd.unet is unet and unet._compiled_call_impl is not None  # compiled in place
    grad, images = once()
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-4 * eager_grad.abs().max().item())
    torch.testing.assert_close(images, eager_images, rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset", ["", "original"])
def test_train_step_mixed_dtypes_in_fp16(tiny, tmp_path, preset):
    """One train_step with UNet and VAE in fp16: the UNet gets fp16 latents and prompt embeddings, the
    classifier fp32 images, the losses and images come back fp32 and the token's gradient is fp32.
    `original`: also the text encoder under fp16 autocast, prompts padded to the longest, plain clamp."""
    cfg = _cfg(tiny, tmp_path, *(["--preset", preset] if preset else []))
    sd = load_sd(tiny["sd"], CPU, torch.float16, size=(16, 16), placeholder="newclas", initializer="a")
    clf = load_classifier(tiny["clf"], "auto")
    seen = {"clf": [], "unet": [], "vae": []}
    clf.model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen["clf"].append((args or [*kwargs.values()])[0].dtype), with_kwargs=True
    )
    sd.unet.register_forward_pre_hook(
        lambda _m, args, kwargs: seen["unet"].append((args[0].dtype, kwargs["encoder_hidden_states"].dtype)),
        with_kwargs=True,
    )
    sd.vae.decoder.register_forward_pre_hook(lambda _m, args: seen["vae"].append(args[0].dtype))
    prompts = ["A photo of newclas crane", "a high resolution realistic image of newclas crane"]
    noise = initial_noise(sd, n=2, seed=0)
    assert noise.dtype == torch.float16
    loss, preds, images = train.train_step(sd, clf, prompts, noise, TARGET, cfg)
    assert loss.dtype == torch.float32 and loss.shape == (2,) and torch.isfinite(loss).all()
    assert images.dtype == torch.float32 and images.shape == (2, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1 and preds.shape == (2,)
    assert seen["clf"] == [torch.float32]
    assert seen["unet"] and set(seen["unet"]) == {(torch.float16, torch.float16)}
    assert seen["vae"] == [torch.float16]
    loss.sum().backward()
    assert sd.token.grad is not None and sd.token.grad.dtype == torch.float32
    assert torch.isfinite(sd.token.grad).all() and sd.token.grad.norm() > 0
