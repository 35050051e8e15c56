"""What the log records about the original's clip before backward (docs/original.md §7.1): the last
image's share of the update and the epoch's regime."""

import json
from types import SimpleNamespace

import pytest
import torch
from test_stopping import TARGET, Scripted, setup  # noqa: F401  (the fixture)

from train import Run, clip_regime, new_run, train_runs


def clip_epoch(grads: list[list[float]], scale: float, max_grad_norm: float = 1.0) -> tuple[float, str]:
    """One epoch's micro-steps on a run's token: the clip before each backward, then image k's gradient
    times scale / N, as `accelerator.backward` adds it. Returns the last image's share and the regime."""
    cfg = SimpleNamespace(lr=0.1, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8, max_grad_norm=max_grad_norm)
    run = Run(cfg, 0, "x", 0, None, None, torch.zeros(2), torch.amp.GradScaler("cpu", enabled=False))
    for g in grads:
        run.clip_before_backward()
        run.token.grad = (0 if run.token.grad is None else run.token.grad) + scale * torch.tensor(g) / len(grads)
    share = run.last_image_share()
    return share, clip_regime(run.clips, share)


@pytest.mark.parametrize(
    ("grads", "max_grad_norm", "share", "regime"),
    [
        ([[3, 0], [0, 1000]], 1.0, 1e6 / (1e6 + 1), "last image alone"),  # clipped to [1, 0], then + [0, 1000]
        ([[3, 0], [0, 1]], 1.0, 0.5, "mixed"),  # [1, 0] + [0, 1]: half of the update is the first image's
        ([[3, 0], [-2, 0]], 1.0, 2.0, "mixed"),  # [1, 0] + [-2, 0] = [-1, 0]: the remainder counts, against it
        ([[3, 0], [0, 1]], 1e9, 0.1, "mean"),  # no cut: [3, 1], the last image's projection 1 of 10
    ],
)
def test_last_image_share_is_the_projection_of_the_last_backward(grads, max_grad_norm, share, regime):
    assert clip_epoch(grads, 2.0, max_grad_norm) == (pytest.approx(share, rel=1e-5), regime)  # clip's eps: 1e-6


@pytest.mark.parametrize(
    ("flags", "regime"), [(dict(loss_scale=2.0**40), "last image alone"), (dict(max_grad_norm=1e30), "mean")]
)
def test_the_log_records_the_clip_regime(setup, flags, regime):  # noqa: F811
    """Through a run: a huge loss scale makes every clip cut and the remainder (norm max_grad_norm, scaled)
    negligible; a huge max_grad_norm never cuts."""
    cfg, sd, paths = setup
    cfg.clip_before_backward, cfg.batch_size, cfg.epoch_size, cfg.num_train_epochs, cfg.accuracy_stop = True, 1, 3, 2, 1
    for k, v in flags.items():
        setattr(cfg, k, v)
    run = new_run(cfg, sd, TARGET, "target", paths.log, paths.img_dir / "train", cfg.seed)
    train_runs(cfg, sd, Scripted([0.0]), [run], Scripted.labels)
    log = [json.loads(line) for line in paths.log.read_text().splitlines()]
    assert [e["last_image_regime"] for e in log] == [regime] * 2
    assert [e["clips"] for e in log] == [[regime != "mean"] * 2] * 2
    for e in log:  # |1 - share| <= |remainder| / |G|: the clip left the remainder at norm max_grad_norm
        bound = cfg.max_grad_norm / (e["grad_norm"] * e["loss_scale"])
        assert regime == "mean" or abs(1 - e["last_image_share"]) <= bound < 0.01
    assert run.summary()["last_image_regime_epochs"] == (2 if regime == "last image alone" else 0)
