"""The original's stopping rules, the kept token, re-seeding after a collapse (docs/original.md §5), and
the fp16 loss scaler (§3), with a scripted classifier whose loss per epoch is chosen."""

import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file

from config import parse_args
from diffusion import load_sd
from train import make_scaler, update_token
from workspace import ClassPaths, train_and_record

TARGET = 1


class Scripted:
    """Classifier stand-in: epoch k's logits are [0, z_k, 0] (plus a tiny image-dependent part, so
    that the token gets a gradient); the loss is -log(e^z / (e^z + 2)), the prediction the argmax."""

    labels = ["other", "target", "else"]

    def __init__(self, zs: list[float], gradient: float = 1e-2):
        self.zs, self.gradient, self.calls = zs, gradient, 0

    def __call__(self, images):
        z = self.zs[min(self.calls, len(self.zs) - 1)]
        self.calls += 1
        logits = torch.zeros(len(images), 3)
        logits[:, TARGET] = z
        return logits + self.gradient * images.flatten(1)[:, :3]


def z_for_loss(loss: float) -> float:
    return math.log(2 / math.expm1(loss))


@pytest.fixture()
def setup(tiny, tmp_path):
    args = ["--sd_model", tiny["sd"], "--classifier", tiny["clf"], "--height", "16", "--width", "16"]
    args += ["--num_of_SD_inference_steps", "2", "--epoch_size", "2", "--output_path", str(tmp_path)]
    cfg = parse_args(args + ["--early_stopping", "2", "--num_train_epochs", "20", "--lr", "0.05"])
    sd = load_sd(
        cfg.sd_model, torch.device("cpu"), torch.float32, size=(16, 16), placeholder="newclas", initializer="a"
    )
    return cfg, sd, ClassPaths.of(cfg, TARGET, "target")


def run_scripted(cfg, sd, paths, zs):
    after = []  # the token after each epoch's update
    record = lambda e, im: after.append(sd.values[0].clone())  # noqa: E731  (slot 0 holds the run's token)
    summary = train_and_record(cfg, sd, Scripted(zs), TARGET, "target", paths, 0, record)
    log = [json.loads(line) for line in paths.log.read_text().splitlines()]
    return summary, log, after, load_file(paths.token)["newclas"]


def test_kept_token_is_the_one_after_the_best_epochs_step_and_collapse_reseeds(setup):
    cfg, sd, paths = setup
    losses = [5.0, 3.0, 4.0, 7.0, 6.0, 6.0, 6.0]  # best at epoch 1; epoch 3 > 2 x 3 re-seeds
    summary, log, after, saved = run_scripted(cfg, sd, paths, [z_for_loss(v) for v in losses])
    assert [round(e["loss"], 2) for e in log] == losses[:5]
    # early_stopping 2: the original's counter 2 -> 1 -> 0 -> -1 stops after 3 epochs without improvement
    assert summary["epochs"] == 5 and summary["stop"].startswith("no loss improvement for 3")
    assert summary["best_epoch"] == 1 and torch.equal(saved, after[1])  # after epoch 1's update
    assert [e["noise_seed"] for e in log] == [35, 35, 35, 35, 36] and summary["noise_seeds"] == [35, 36]


def test_keep_best_epoch_keeps_the_token_that_produced_the_best_loss(setup):
    cfg, sd, paths = setup
    cfg.keep = "best_epoch"
    summary, _, after, saved = run_scripted(cfg, sd, paths, [z_for_loss(v) for v in [5.0, 3.0, 4.0, 7.0, 6.0]])
    assert summary["best_epoch"] == 1 and torch.equal(saved, after[0])  # before epoch 1's update
    assert "produced epoch 1" in summary["kept_token"]


def test_reseeding_changes_the_noises_and_can_be_turned_off(setup, monkeypatch):
    import train

    cfg, sd, paths = setup
    seeds = []
    real = train.initial_noise
    monkeypatch.setattr(train, "initial_noise", lambda sd, n, seed: seeds.append(seed) or real(sd, n=n, seed=seed))
    losses = [5.0, 3.0, 7.0, 7.0, 7.0]
    run_scripted(cfg, sd, paths, [z_for_loss(v) for v in losses])
    assert seeds == [35, 35, 35, 36, 37]  # each epoch above 2 x best draws new noises for the next
    cfg.reseed_on_collapse, seeds[:] = False, []
    _, log, _, _ = run_scripted(cfg, sd, paths, [z_for_loss(v) for v in losses])
    assert seeds == [35] * 5 and {e["noise_seed"] for e in log} == {35}


def test_accuracy_stop_keeps_the_token_that_reached_the_accuracy(setup):
    cfg, sd, paths = setup
    summary, log, after, saved = run_scripted(cfg, sd, paths, [-2.0, -1.0, 3.0, 3.0])
    assert [e["accuracy"] for e in log] == [0.0, 0.0, 1.0]
    assert summary["stop"].startswith("accuracy 1.00 > 0.7") and summary["best_epoch"] == 2
    assert torch.equal(saved, after[1])  # the token before epoch 2's update made epoch 2's images
    assert not torch.equal(saved, after[2]) and "accuracy stop" in summary["kept_token"]


def test_user_stop_keeps_the_best_token(setup):
    cfg, sd, paths = setup
    after = []

    def on_epoch(entry, images):
        assert images.shape == (cfg.epoch_size, 3, 16, 16)
        after.append(sd.values[0].clone())
        return entry["epoch"] == 2

    zs = [z_for_loss(v) for v in (5.0, 3.0, 4.0, 4.0)]
    summary = train_and_record(cfg, sd, Scripted(zs), TARGET, "target", paths, 0, on_epoch)
    assert summary["stop"] == "stopped by the user" and summary["epochs"] == 3
    assert torch.equal(load_file(paths.token)["newclas"], after[1])


def test_zero_gradient_is_counted_logged_and_warned_once(setup):
    cfg, sd, paths = setup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train_and_record(cfg, sd, Scripted([-1.0] * 3, gradient=0.0), TARGET, "target", paths, 0)
    log = [json.loads(line) for line in paths.log.read_text().splitlines()]
    assert all(e["zero_grad"] and e["grad_norm"] == 0.0 for e in log)
    assert summary["zero_grad_epochs"] == len(log) > 1
    assert [str(w.message) for w in caught if "underflow" in str(w.message)] == [
        "2_target: gradient underflow: try --mixed_precision bf16"
    ]


def _scaled_step(scaler, grad: torch.Tensor):
    token = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([token], lr=0.1, weight_decay=0.0)
    token.grad = scaler.scale(grad.clone())  # as backward of a scaled loss gives it
    info = update_token(opt, scaler, token, max_grad_norm=10.0, loss=1.0)
    return token.detach(), info


def test_grad_scaler_on_cpu_unscales_skips_overflow_and_halves():
    g = torch.tensor([1e-6, -2e-6, 0.0, 3e-6])
    plain, _ = _scaled_step(torch.amp.GradScaler("cpu", enabled=False), g)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaled, info = _scaled_step(scaler, g)
    torch.testing.assert_close(scaled, plain)  # the same update as without scaling
    assert info["loss_scale"] == 2.0**16 and not info["skipped"] and scaler.get_scale() == 2.0**16
    before = torch.ones(4)
    token, info = _scaled_step(scaler, torch.tensor([1.0, float("inf"), 0.0, 0.0]))
    assert info["skipped"] and torch.equal(token, before)  # overflow: no step
    assert scaler.get_scale() == 2.0**15  # and the scale halves, as torch's dynamic scaler


def test_scaler_is_the_originals_in_fp16_and_off_otherwise(setup):
    cfg, sd, _ = setup
    assert not make_scaler(sd, cfg).is_enabled()  # fp32 on the CPU
    sd.dtype = torch.float16
    scaler = make_scaler(sd, cfg)
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16 == cfg.loss_scale
    assert scaler.get_growth_interval() == 2000 and scaler.get_backoff_factor() == 0.5
