"""The training step: only S_c's row changes; the original's gradient path (docs/original.md §1), the
straight-through clamp, gradient checkpointing that really runs (§3)."""

import pytest
import torch

from config import parse_args
from diffusion import configure, encode, generate, initial_noise, load_sd
from train import straight_through_clamp, train_step


@pytest.fixture()
def setup(tiny):
    from classifiers import load_classifier

    cfg = parse_args(["--sd_model", tiny["sd"], "--classifier", tiny["clf"], "--height", "16", "--width", "16"])
    cfg.num_of_SD_inference_steps = 4
    sd = load_sd(
        cfg.sd_model, torch.device("cpu"), torch.float32, size=(16, 16), placeholder="newclas", initializer="a"
    )
    return cfg, sd, load_classifier(cfg.classifier)


def snapshot(*modules):
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def test_only_the_token_changes(setup):
    cfg, sd, clf = setup
    before = snapshot(sd.unet, sd.vae, sd.text_encoder, clf)
    token_before = sd.token.detach().clone()
    opt = torch.optim.AdamW([sd.token], lr=0.1, weight_decay=0.01)
    noise = initial_noise(sd, n=2, seed=0)
    loss, _, _ = train_step(sd, clf, ["A photo of newclas tiger cat"] * 2, noise, 1, cfg)
    loss.sum().backward()
    assert sd.token.grad is not None and sd.token.grad.abs().sum() > 0
    opt.step()
    after = snapshot(sd.unet, sd.vae, sd.text_encoder, clf)
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen weight changed"
    assert not torch.equal(token_before, sd.token)
    # The trained row is what the text encoder sees for S_c, and only for S_c.
    with torch.no_grad():
        e1 = encode(sd, ["A photo of newclas tiger cat"]).embeds
        sd.token.add_(1.0)
        e2 = encode(sd, ["A photo of newclas tiger cat"]).embeds
        e3, e4 = encode(sd, ["A photo of a tiger cat"]).embeds, encode(sd, ["A photo of a tiger cat"]).embeds
    assert not torch.allclose(e1, e2) and torch.equal(e3, e4)


def grad_enabled_unet_calls(sd, clf, cfg) -> list[bool]:
    calls = []
    hook = sd.unet.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    loss, _, _ = train_step(sd, clf, ["A photo of newclas crane"], initial_noise(sd, n=1, seed=0), 2, cfg)
    hook.remove()
    assert loss.requires_grad
    return calls


def test_gradient_path_is_the_originals_under_pndm(setup):
    """The original's rule over scheduler.timesteps: calls with i < steps - 1 run without grad.
    PNDM (SD 1.4) lists 5 timesteps for 4 steps, so TWO calls carry the gradient (docs/original.md §1)."""
    cfg, sd, clf = setup
    assert type(sd.scheduler).__name__ == "PNDMScheduler" and cfg.grad_steps == 1
    assert grad_enabled_unet_calls(sd, clf, cfg) == [False, False, False, True, True]


def test_gradient_path_under_ddim_is_one_call(setup):
    from diffusers import DDIMScheduler

    cfg, sd, clf = setup
    sd.pipe.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    assert grad_enabled_unet_calls(sd, clf, cfg) == [False, False, False, True]
    cfg.grad_steps = 2
    assert grad_enabled_unet_calls(sd, clf, cfg) == [False, False, True, True]


def test_grad_steps_n_opens_every_call(setup):
    cfg, sd, clf = setup
    cfg.grad_steps = cfg.num_of_SD_inference_steps
    assert grad_enabled_unet_calls(sd, clf, cfg) == [True] * 5


def test_generation_builds_no_graph(setup):
    _, sd, _ = setup
    calls = []
    hook = sd.unet.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    generate(sd, "A photo of newclas crane", [0], 4, 7.5, 1)
    hook.remove()
    assert calls == [False] * 5


def test_straight_through_clamp_forward_clamps_backward_is_identity():
    x = torch.tensor([-0.5, 0.2, 1.7], requires_grad=True)
    y = straight_through_clamp(x)
    assert torch.equal(y, x.detach().clamp(0, 1))
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0]))  # saturated pixels keep their gradient


def test_classifier_sees_the_clamped_image_in_training(setup, monkeypatch):
    cfg, sd, clf = setup
    seen = []
    monkeypatch.setattr(type(clf), "forward", lambda self, x: seen.append(x) or x.flatten(1)[:, :5] * 1.0)
    monkeypatch.setattr("train.decode", lambda sd, latents: torch.full((1, 3, 16, 16), 1.5) + 0 * latents.sum())
    train_step(sd, clf, ["A photo of newclas crane"], initial_noise(sd, n=1, seed=0), 2, cfg)
    assert torch.equal(seen[0], torch.ones(1, 3, 16, 16))


def test_gradient_checkpointing_really_runs(setup, monkeypatch):
    """Older diffusers checkpoint only in train mode: a gradient step runs UNet and VAE in train
    mode when checkpointing is on and goes through torch.utils.checkpoint."""
    import torch.utils.checkpoint as ckpt

    cfg, sd, clf = setup
    configure(sd, gradient_checkpointing=True)
    calls, modes = [], []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    hook = sd.vae.decoder.register_forward_pre_hook(lambda m, _: modes.append((sd.unet.training, m.training)))
    loss, _, _ = train_step(sd, clf, ["A photo of newclas crane"], initial_noise(sd, n=1, seed=0), 2, cfg)
    loss.sum().backward()
    hook.remove()
    assert len(calls) >= 1 and sd.token.grad.abs().sum() > 0
    assert modes == [(True, True)] and not sd.unet.training and not sd.vae.training  # eval again afterwards


def test_train_mode_changes_only_rounding(setup):
    """SD's UNet and VAE have no batch norm and no active dropout: the checkpointed (train mode)
    gradient step gives the same loss and gradient as the plain one, up to rounding."""
    cfg, sd, clf = setup
    for m in (sd.unet, sd.vae):
        assert not any(isinstance(d, torch.nn.modules.batchnorm._BatchNorm) for d in m.modules())
    results = []
    for checkpointing in (False, True):
        configure(sd, gradient_checkpointing=checkpointing)
        sd.token.grad = None
        loss, _, _ = train_step(sd, clf, ["A photo of newclas crane"], initial_noise(sd, n=1, seed=0), 2, cfg)
        loss.sum().backward()
        results.append((loss.detach(), sd.token.grad.clone()))
    # Measured: identical at 1 and 2 threads (loss 1.48, gradient up to 1.1e-4); the tolerances allow for a
    # recomputation that reorders reductions, as test_batching.py measures (1.9e-6 relative).
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)


def test_prompts_pad_to_max_length(setup):
    _, sd, _ = setup
    assert encode(sd, ["A photo of newclas tiger cat"]).embeds.shape[1] == sd.tokenizer.model_max_length


def test_training_log_records_each_images_prompt_in_order(tiny, tmp_path, monkeypatch):
    """train_log.jsonl names the prompt of every training image, in image order, as the model saw it
    (class batches write each run's slot word; the log writes the placeholder)."""
    import json

    from conftest import tiny_args

    import train
    from run import main

    seen, real = [], train.train_step
    monkeypatch.setattr(
        train, "train_step", lambda sd, clf, prompts, *a: seen.append(prompts) or real(sd, clf, prompts, *a)
    )
    out = tmp_path / "out"
    args = tiny_args(
        tiny, out, "--class_index", "2,3", "--class_batch", "2", "--epoch_size", "3", "--evaluate", "False"
    )
    assert main([*args, "--batch_size", "1", "--number_of_prompts", "3", "--accuracy_stop", "1"]) == 0
    logs = {
        c: [json.loads(line) for line in (out / "pipeline_token" / c / "default" / "train_log.jsonl").open()]
        for c in ("2_tiger_cat", "3_crane")
    }
    # batch 1 per run: forward j holds image j of run 0 (word newclas) and of run 1 (newclas1)
    assert len(seen) == 6 and all(len(p) == 2 and " newclas1 " in p[1] for p in seen)
    for epoch in range(2):
        calls = seen[epoch * 3 : (epoch + 1) * 3]
        for k, c in enumerate(logs):
            shown = [p[k].replace("newclas1", "newclas") for p in calls]
            assert logs[c][epoch]["prompts"] == shown and len(set(shown)) == 3
    assert all(p.endswith(" newclas crane") for e in logs["3_crane"] for p in e["prompts"])
