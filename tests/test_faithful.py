"""The original's rules that the default run keeps (classifier precision, infinite losses, the baseline
prompt), and the defects that --preset original reproduces (docs/original.md §7, docs/differences.md)."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_args
from test_stopping import Scripted, setup  # noqa: F401  (the fixture)

from config import parse_args
from diffusion import encode, initial_noise, load_sd, longest_prompt
from run import main
from train import Run, _decay_vocabulary, clip_regime, make_scaler, train_step, update_token
from workspace import load_classifiers, load_diffusion, train_and_record


def test_classifier_runs_in_fp32(tiny, tmp_path):
    """UNet and VAE in half precision, the classifier in fp32 fed fp32 images (docs/original.md §3)."""
    cfg = parse_args(tiny_args(tiny, tmp_path))
    classifiers = load_classifiers(cfg)
    sd = load_diffusion(cfg, classifiers, torch.device("cpu"), torch.bfloat16)
    clf = classifiers["classifier"]
    assert sd.unet.dtype == torch.bfloat16 and {p.dtype for p in clf.model.parameters()} == {torch.float32}
    seen = []
    clf.model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args or [*kwargs.values()])[0].dtype), with_kwargs=True
    )
    noise = initial_noise(sd, n=1, seed=0)
    loss, _, _ = train_step(sd, clf, ["A photo of newclas crane"], noise, 2, cfg)
    assert seen == [torch.float32] and loss.dtype == torch.float32


def test_infinite_loss_reseeds_as_the_original(setup):  # noqa: F811
    """An epoch loss of inf is above twice any best: the original re-seeds (`inf > 2 * min_loss`)."""
    cfg, sd, paths = setup
    cfg.num_train_epochs = 3
    train_and_record(cfg, sd, Scripted([-1.0, -float("inf"), -1.0]), 1, "target", paths, 0)
    log = [json.loads(line) for line in paths.log.read_text().splitlines()]
    assert log[1]["loss"] == float("inf") and [e["noise_seed"] for e in log] == [35, 35, 36]


def test_baseline_prompt_uses_the_initializer_token(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--initializer_token", "the", "--num_train_epochs", "1")) == 0
    m = json.loads((out / "pipeline_token" / "2_tiger_cat" / "default" / "metrics.json").read_text())
    assert m["prompts"]["baseline"] == "A photo of the tiger cat"


def clip_sequence(grads: list[torch.Tensor], scale: float) -> torch.Tensor:
    """The original's micro-steps on a token: the clip before each backward, then the scaled gradient of
    one image over 5 (accelerate divides by the accumulation steps); finally unscale and read the gradient."""
    cfg = SimpleNamespace(lr=0.1, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8, max_grad_norm=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaler.scale(torch.ones(()))  # as the backward of a scaled loss would have
    run = Run(cfg, 0, "x", 0, None, None, torch.zeros(4), scaler)
    for g in grads:
        run.clip_before_backward()
        run.token.grad = (run.token.grad if run.token.grad is not None else 0) + scale * g / len(grads)
    update_token(run.opt, scaler, run.token, 1.0, 1.0, clip=False)  # steps on the unscaled gradient
    return run.token.grad, run.clips


def test_original_clip_sequence_keeps_the_last_image_above_the_threshold():
    torch.manual_seed(0)
    grads = [torch.randn(4) for _ in range(5)]
    big = [g / g.norm() * 1e-3 for g in grads]  # per-image norm 1e-3 > 5 / 65536 = 7.6e-5
    final, clips = clip_sequence(big, 65536.0)
    assert clips == [True] * 4  # the first micro-step has no gradient yet to clip
    assert (final - big[-1] / 5).norm() <= 1 / 65536 + 1e-9  # g5 / 5 + r, ||r|| <= 1 / scale
    assert torch.nn.functional.cosine_similarity(final, big[-1], dim=0) > 0.99
    small = [g / g.norm() * 1e-5 for g in grads]  # below the threshold the clip never cuts
    final, clips = clip_sequence(small, 65536.0)
    assert clips == [False] * 4 and torch.allclose(final, sum(small) / 5, atol=1e-12)


def test_whole_matrix_adamw_decays_other_rows():
    """AdamW over the whole embedding matrix with the other rows' gradients zeroed equals AdamW on the
    token's row plus the decoupled decay of every other row (what `decay_vocabulary` applies)."""
    torch.manual_seed(0)
    lr, wd, k = 0.1, 0.01, 3
    weight = torch.randn(6, 4)
    whole = torch.nn.Parameter(weight.clone())
    opt = torch.optim.AdamW([whole], lr=lr, weight_decay=wd)
    emb = torch.nn.Embedding(6, 4)
    emb.weight.data.copy_(weight)
    sd = SimpleNamespace(text_encoder=SimpleNamespace(get_input_embeddings=lambda: emb), slot_ids=[k])
    cfg = SimpleNamespace(
        lr=lr, betas=(0.9, 0.999), weight_decay=wd, eps=1e-8, max_grad_norm=1.0, decay_vocabulary=True
    )
    run = Run(cfg, 0, "x", 0, None, None, weight[k], torch.amp.GradScaler("cpu", enabled=False))
    for _ in range(4):
        g = torch.randn(4)
        whole.grad = torch.zeros_like(whole)
        whole.grad[k] = g
        opt.step()
        run.token.grad = g.clone()
        run.opt.step()
        _decay_vocabulary(sd, cfg, run, dict(skipped=False))
    others = [i for i in range(6) if i != k]
    assert torch.allclose(emb.weight[others], whole[others].detach(), atol=1e-7)
    assert torch.allclose(run.token.detach(), whole[k].detach(), atol=1e-7)
    assert not torch.allclose(whole[others].detach(), weight[others])  # the vocabulary did shrink


def test_original_padding_pads_to_the_longest(tiny, tmp_path):
    cfg = parse_args(tiny_args(tiny, tmp_path, "--pad_to_longest"))
    sd = load_sd(tiny["sd"], torch.device("cpu"), torch.float32, size=(16, 16), placeholder="newclas", initializer="a")
    lengths = []
    sd.text_encoder.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
    prompts = ["A photo of newclas crane", "a high resolution realistic image of newclas crane"]
    train_step(sd, _Identity(), prompts, initial_noise(sd, n=2, seed=0), 2, cfg)
    assert lengths == [longest_prompt(sd, prompts)] * 2 < [sd.tokenizer.model_max_length] * 2  # cond, uncond
    assert encode(sd, prompts).embeds.shape[1] == sd.tokenizer.model_max_length  # the default pads to 77


class _Identity:
    def __call__(self, images):
        return images.flatten(1)[:, :5]


def test_preset_original_runs_and_logs_the_last_image_regime(tiny, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(tiny, out, "--preset", "original", "--num_train_epochs", "3")
    assert main(args) == 0
    tok = out / "pipeline_token" / "2_tiger_cat" / "default"
    cfg = json.loads((tok / "config.json").read_text())
    assert cfg["batch_size"] == 1 and cfg["clip_before_backward"] and cfg["decay_vocabulary"]
    log = [json.loads(line) for line in (tok / "train_log.jsonl").read_text().splitlines()]
    regimes = [clip_regime(e["clips"], e["last_image_share"]) for e in log]
    assert all(len(e["clips"]) == 1 for e in log) and [e["last_image_regime"] for e in log] == regimes  # 2 images
    summary = json.loads((tok / "train_summary.json").read_text())
    assert summary["last_image_regime_epochs"] == sum(e["last_image_regime"] == "last image alone" for e in log)
    assert summary["micro_batch_size"] == 1


def test_fp32_runs_get_the_loss_scale_only_for_the_originals_clip(tiny, tmp_path):
    sd = load_sd(tiny["sd"], torch.device("cpu"), torch.float32, size=(16, 16), placeholder="newclas", initializer="a")
    assert not make_scaler(sd, parse_args(tiny_args(tiny, tmp_path))).is_enabled()
    scaler = make_scaler(sd, parse_args(tiny_args(tiny, tmp_path, "--preset", "original")))
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0


@pytest.mark.parametrize("flagged", [False, True])
def test_original_evaluation_blackens_what_the_safety_checker_flags(tiny, tmp_path, monkeypatch, flagged):
    """eval_as_original: fp32 generation, then the model's safety checker; a flagged image is black."""
    import diffusion

    cfg = parse_args(tiny_args(tiny, tmp_path, "--preset", "original"))
    sd = load_sd(
        tiny["sd"],
        torch.device("cpu"),
        torch.float16,
        size=(16, 16),
        placeholder="newclas",
        initializer="a",
        safety_checker=True,
    )

    class Checker(torch.nn.Module):  # the diffusers checker's interface: (images, clip_input) -> (images, flags)
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images, clip_input):
            assert clip_input.shape[0] == len(images)
            return (torch.zeros_like(images) if flagged else images), [flagged] * len(images)

    class Features:
        def __call__(self, images, return_tensors):
            return SimpleNamespace(pixel_values=torch.zeros(len(images), 3, 4, 4))

    monkeypatch.setattr(sd.pipe, "safety_checker", Checker(), raising=False)
    monkeypatch.setattr(sd.pipe, "feature_extractor", Features(), raising=False)
    dtypes = []
    real = diffusion.decode
    monkeypatch.setattr(diffusion, "decode", lambda s, latents: dtypes.append(s.vae.dtype) or real(s, latents))
    from evaluate import eval_images

    images = eval_images(cfg, sd, "A photo of a crane", [0, 1])
    assert dtypes == [torch.float32] and sd.unet.dtype == torch.float16  # fp32 only while evaluating
    assert (images.abs().sum() == 0) == flagged
