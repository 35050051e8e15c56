"""The training step: only S_c's row changes, gradient skipping builds no graph early."""

import pytest
import torch

from config import parse_args
from diffusion import encode, initial_noise, load_sd
from train import train_step


@pytest.fixture()
def setup(tiny):
    from classifiers import load_classifier

    cfg = parse_args(["--sd_model", tiny["sd"], "--classifier", tiny["clf"], "--height", "16", "--width", "16"])
    cfg.num_of_SD_inference_steps = 4
    sd = load_sd(cfg.sd_model, torch.device("cpu"), torch.float32, (16, 16), "newclas", "a")
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
    loss.backward()
    assert sd.token.grad is not None and sd.token.grad.abs().sum() > 0
    opt.step()
    after = snapshot(sd.unet, sd.vae, sd.text_encoder, clf)
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen weight changed"
    assert not torch.equal(token_before, sd.token)
    # The trained row is what the text encoder sees for S_c, and only for S_c.
    with torch.no_grad():
        e1 = encode(sd, ["A photo of newclas tiger cat"])
        sd.token.add_(1.0)
        e2 = encode(sd, ["A photo of newclas tiger cat"])
        e3, e4 = encode(sd, ["A photo of a tiger cat"]), encode(sd, ["A photo of a tiger cat"])
    assert not torch.allclose(e1, e2) and torch.equal(e3, e4)


@pytest.mark.parametrize("grad_steps", [1, 2])
def test_graph_only_through_the_last_steps(setup, grad_steps):
    cfg, sd, clf = setup
    cfg.grad_steps = grad_steps
    grad_calls = []
    hook = sd.unet.register_forward_hook(lambda *_: grad_calls.append(torch.is_grad_enabled()))
    loss, _, _ = train_step(sd, clf, ["A photo of newclas crane"], initial_noise(sd, n=1, seed=0), 2, cfg)
    hook.remove()
    # PNDM (SD 1.4's sampler) runs its first timestep twice: 4 steps are 5 UNet calls.
    assert len(grad_calls) == len(sd.scheduler.timesteps) >= 4
    assert grad_calls == [False] * (len(grad_calls) - grad_steps) + [True] * grad_steps
    assert loss.requires_grad


def test_prompts_pad_to_max_length(setup):
    _, sd, _ = setup
    assert encode(sd, ["A photo of newclas tiger cat"]).shape[1] == sd.tokenizer.model_max_length
