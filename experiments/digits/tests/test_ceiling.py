"""experiments/digits/ceiling.py: a token fitted to the seeds it is judged on (a reference for
experiments/digits/NOTES.md, "Why the goal is not reached")."""

import json
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from experiments.digits.ceiling import FittedRun, best_epoch_token, main


def test_best_epoch_token_is_the_one_that_drew_the_best_epoch():
    """Epoch e's images come from the token before e's update: the snapshot after epoch e - 1."""
    run = SimpleNamespace(init=torch.zeros(2), log=[dict(accuracy=a) for a in (0.2, 0.5, 0.9, 0.9)])
    run.snapshots = {e: torch.full((2,), float(e + 1)) for e in range(4)}
    epoch, token = best_epoch_token(run)
    assert epoch == 2 and torch.equal(token, run.snapshots[1])
    run.log = [dict(accuracy=0.7), dict(accuracy=0.1)]
    assert best_epoch_token(run)[0] == 0 and torch.equal(best_epoch_token(run)[1], run.init)


def test_fitted_seeds_are_trained_on_the_evaluation_prompt_and_noises(tmp_path):
    """The training images of epoch 0 (the initializer) are the baseline's evaluation images of the
    fitted seeds, pixel for pixel; one epoch: the best token is the initializer and scores as the baseline."""
    from diffusion import initial_noise
    from evaluate import token_images
    from experiments.digits.replay_selection import world

    cfg, sd, _ = world()
    run = FittedRun(cfg, 3, "curl", 35, tmp_path / "log", tmp_path, sd.init_embedding, None, fitted=[1000, 1001])
    prompts, noise = run.epoch_inputs(sd, epoch=5)
    assert prompts == [f"A photo of {sd.slot_word(0)} curl"] * 2
    assert torch.equal(noise, initial_noise(sd, seeds=[1000, 1001]))

    (tmp_path / "out" / "4_curl").mkdir(parents=True)
    (tmp_path / "out" / "4_curl" / "e000_00_0_old.png").write_bytes(b"an earlier fit's image")
    main(["--class_index", "4", "--seeds", "3", "--epochs", "1", "--out", str(tmp_path / "out"), "--", "--lr", "0.01"])
    saved = json.loads((tmp_path / "out" / "ceiling.json").read_text())
    assert saved["fitted"] == [1000, 1001, 1002] and saved["held_out"] == [1003, 1004, 1005]
    (row,) = saved["rows"]
    assert row["best_epoch"] == 0 and row["epochs"] == 1
    for where in ("fitted", "held_out"):
        best, base = row[f"{where}_best_epoch"], row[f"{where}_baseline"]
        assert best["hits"] == base["hits"] and best["gain"] == 0 and best["low"] < 0 < best["high"]
    assert not (tmp_path / "out" / "4_curl" / "e000_00_0_old.png").exists()
    assert {"kept.safetensors", "best_epoch.safetensors"} <= {f.name for f in (tmp_path / "out" / "4_curl").iterdir()}
    log = [json.loads(x) for x in (tmp_path / "out" / "4_curl" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and len(log[0]["predictions"]) == 3 and log[0]["lr"] == 0.01
    baseline = next(token_images(cfg, sd, [(sd.init_embedding, "curl")], [1000, 1001, 1002]))
    for j, image in enumerate(baseline):
        (file,) = (tmp_path / "out" / "4_curl").glob(f"e000_{j:02d}_*.png")
        pixels = torch.from_numpy(np.array(Image.open(file))).permute(2, 0, 1).float()
        assert torch.equal(pixels, (image.clamp(0, 1) * 255).round())


def test_score_saves_the_token_that_drew_the_best_epoch(tmp_path):
    """Epoch 2 has the best training accuracy: its images came from the snapshot after epoch 1, which is
    saved and judged as the best-epoch token; the kept token is saved beside it."""
    from experiments.digits.ceiling import score
    from experiments.digits.replay_selection import world
    from tokens import load_token

    cfg, sd, classifiers = world()
    run = FittedRun(cfg, 8, "curl", 35, tmp_path / "log", tmp_path, sd.init_embedding, None, fitted=[1000, 1001])
    run.log = [dict(accuracy=a) for a in (0.0, 0.5, 1.0, 1.0)]
    run.snapshots = {e: torch.randn_like(sd.init_embedding) for e in range(4)}
    run.kept, run.kept_epoch = run.snapshots[3], 3
    row = score(cfg, sd, classifiers, run, held_out=[1002, 1003])
    assert row["best_epoch"] == 2 and row["kept_epoch"] == 3
    best = load_token(tmp_path / "best_epoch.safetensors", sd, cfg.placeholder_token)
    kept = load_token(tmp_path / "kept.safetensors", sd, cfg.placeholder_token)
    assert torch.equal(best, run.snapshots[1]) and torch.equal(kept, run.snapshots[3])
    assert all(len(row[f"{w}_{n}"]["hits"]) == 2 for w in ("fitted", "held_out") for n in ("kept", "best_epoch"))
