"""Many token runs in one batch: the same math as one at a time, each run's own loss scale, candidates
chosen without the judge, class batches with resume, and the bad inputs."""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image

from classifiers import load_classifier
from config import SELECTION_SEED, parse_args
from diffusion import load_sd
from run import main
from train import make_scaler, new_run, train_runs

RUNS = [(1, 35), (2, 36), (4, 40)]  # (class, training seed): different classes, seeds and stopping epochs


# Kept tokens of the same run trained in other batches: measured up to 9.5e-5 apart (values ~0.9, lr 0.5)
# under OMP_NUM_THREADS 1 and 2, ATen's AVX2 and AVX-512 kernels, every order of RUNS, pairs of them and
# --batch_size 0/1/2; about 3x that, and a third of the 1e-3 shift the test below must see.
KEPT_ATOL = 3e-4


def _train(tiny, tmp_path, runs_spec, dtype=torch.float32, init_shift=0.0, **overrides):
    args = tiny_args(tiny, tmp_path, "--num_train_epochs", "6", "--early_stopping", "1", "--lr", "0.5")
    cfg = parse_args([*args, "--accuracy_stop", "1"])
    for k, v in overrides.items():
        setattr(cfg, k, v)
    sd = load_sd(
        tiny["sd"],
        torch.device("cpu"),
        dtype,
        size=(16, 16),
        placeholder="newclas",
        initializer="a",
        slots=len(runs_spec),
    )
    clf = load_classifier(tiny["clf"], "auto")
    runs = [
        new_run(cfg, sd, c, "crane", log_path=tmp_path / f"{c}_{s}.jsonl", img_dir=tmp_path / f"img{c}_{s}", seed=s)
        for c, s in runs_spec
    ]
    if init_shift:  # the same runs from a token that starts init_shift away in every entry
        runs = [replace(r, init=r.init + init_shift) for r in runs]
    return train_runs(cfg, sd, clf, runs, clf.labels) or runs


def _same_kept_token(a, b) -> bool:
    return torch.allclose(a.kept, b.kept, atol=KEPT_ATOL)


def test_runs_trained_together_equal_runs_trained_apart(tiny, tmp_path):
    together = _train(tiny, tmp_path / "together", RUNS)
    apart = [_train(tiny, tmp_path / f"apart{i}", [spec])[0] for i, spec in enumerate(RUNS)]
    assert len({len(r.log) for r in together}) >= 2, "the runs should stop at different epochs"
    for a, b in zip(together, apart):
        assert len(a.log) == len(b.log) and a.stop == b.stop and a.noise_seed == b.noise_seed
        for ea, eb in zip(a.log, b.log):
            assert ea["loss"] == pytest.approx(eb["loss"], rel=1e-4) and ea["predictions"] == eb["predictions"]
        assert _same_kept_token(a, b), (a.kept - b.kept).abs().max()
    # The comparison sees a real difference: the runs from a start 1e-3 away keep other tokens.
    shifted = _train(tiny, tmp_path / "shifted", RUNS, init_shift=1e-3)
    assert not any(_same_kept_token(a, b) for a, b in zip(shifted, together))


def test_each_run_keeps_its_own_loss_scale_in_fp16(tiny, tmp_path, monkeypatch):
    """fp16 on the CPU: run 0 starts at a loss scale that overflows fp16; its step is skipped and its
    scale halved, while run 1 (the original's 2^16) steps normally in the same forward and backward."""
    import train

    scales = iter([2.0**60, 2.0**16])

    def scaler(sd, cfg):
        return torch.amp.GradScaler("cpu", init_scale=next(scales), enabled=True)

    monkeypatch.setattr(train, "make_scaler", scaler)
    runs = _train(tiny, tmp_path, RUNS[:2], torch.float16, num_train_epochs=1)
    first, second = runs[0].log[0], runs[1].log[0]
    assert first["skipped"] and first["loss_scale"] == 2.0**60 and runs[0].scaler.get_scale() == 2.0**59
    assert not second["skipped"] and second["loss_scale"] == 2.0**16
    assert torch.equal(runs[0].token.detach(), runs[0].init) and not torch.equal(runs[1].token.detach(), runs[1].init)


def _out_of_memory_above(limit: int, monkeypatch):
    """train_step runs out of memory on forwards of more than `limit` images, after leaving a gradient
    behind (a backward can fail after some gradient reached the tokens)."""
    import train

    real = train.train_step

    def step(sd, clf, prompts, *rest):
        if len(prompts) > limit:
            for value in sd.values:
                if isinstance(value, torch.nn.Parameter):
                    value.grad = torch.full_like(value, 1e3)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(sd, clf, prompts, *rest)

    monkeypatch.setattr(train, "train_step", step)


def test_out_of_memory_halves_the_forward_and_redoes_the_epoch(tiny, tmp_path, monkeypatch):
    """Automatic batch size: 3 runs x 2 images fail as one forward of 6; the epoch is redone from zeroed
    gradients with 3 images per forward, exactly the forwards of --batch_size 1 (one image of each run)."""
    reference = _train(tiny, tmp_path / "ref", RUNS, batch_size=1)
    _out_of_memory_above(3, monkeypatch)
    with pytest.warns(UserWarning, match="out of memory at 6 images per forward; now 3"):
        adapted = _train(tiny, tmp_path / "oom", RUNS)
    for a, b in zip(adapted, reference):
        assert [e["loss"] for e in a.log] == pytest.approx([e["loss"] for e in b.log], rel=1e-6)
        assert torch.allclose(a.kept, b.kept, atol=1e-6), (a.kept - b.kept).abs().max()


def test_a_failed_pass_leaves_no_training_image(tiny, tmp_path, monkeypatch):
    """Epoch 0: 6 images fail; of the pass with 3 per forward, the first forward succeeds (here with other
    predictions, as another split can give) and the second fails; the epoch is redone with 1 per forward.
    Only the redone epoch's images are written, named by the predictions in the log."""
    import train

    real, sizes = train.train_step, []

    def step(sd, clf, prompts, *rest):
        sizes.append(len(prompts))
        if len(prompts) == 6 or sizes.count(3) == 2 and len(prompts) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        loss, pred, images = real(sd, clf, prompts, *rest)
        return loss, (pred + 1) % len(clf.labels) if len(prompts) == 3 else pred, images

    monkeypatch.setattr(train, "train_step", step)
    with pytest.warns(UserWarning, match="out of memory") as caught:
        runs = _train(tiny, tmp_path, RUNS, num_train_epochs=1)
    assert [str(w.message)[-5:] for w in caught] == ["now 3", "now 1"]
    assert sizes[:3] == [6, 3, 3] and set(sizes[3:]) == {1}
    for run in runs:
        expected = [f"e000_{j:02d}_{p}_" for j, p in enumerate(run.log[0]["predictions"])]
        written = sorted(p.name for p in run.img_dir.glob("*.png"))
        assert [w[: len(e)] for w, e in zip(written, expected)] == expected and len(written) == len(expected)


def test_out_of_memory_at_one_image_per_forward_reaches_the_user(tiny, tmp_path, monkeypatch):
    """Halving ends at 1 image per forward: then the error is raised, and no image of the failed passes stays."""
    _out_of_memory_above(0, monkeypatch)
    with pytest.warns(UserWarning, match="out of memory") as caught:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            _train(tiny, tmp_path, RUNS)
    assert [str(w.message) for w in caught] == [
        f"out of memory at {n} images per forward; now {n // 2}" for n in (6, 3)
    ]
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize("setting", [dict(batch_size=2), dict(pad_to_longest=True), dict(clip_before_backward=True)])
def test_out_of_memory_at_a_chosen_batch_size_is_the_users_to_fix(tiny, tmp_path, monkeypatch, setting):
    """An explicit --batch_size is kept, and so is the split of the original's computations that depend on
    it (padding to the longest prompt, clipping before backward): the error reaches run.py, which names
    the flags to lower."""
    _out_of_memory_above(3, monkeypatch)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _train(tiny, tmp_path, RUNS, **setting)


def test_make_scaler_is_per_run(tiny):
    sd = load_sd(tiny["sd"], torch.device("cpu"), torch.float16, size=(16, 16), placeholder="newclas", initializer="a")
    cfg = parse_args(["--device", "cpu"])
    assert make_scaler(sd, cfg) is not make_scaler(sd, cfg) and make_scaler(sd, cfg).is_enabled()


def test_candidates_are_chosen_on_selection_seeds_by_the_training_classifier(tiny, tmp_path, judges_and_seeds):
    seen = judges_and_seeds
    out = tmp_path / "out"
    args = tiny_args(tiny, out, "--candidates", "3", "--select_size", "4", "--eval_classifier", tiny["clf_b"])
    assert main([*args, "--evaluate", "False"]) == 0
    judges = {name for kind, name in seen if kind == "judge"}
    seeds = {s for kind, ss in seen if kind == "seeds" for s in ss}
    assert judges == {load_classifier(tiny["clf"], "auto").name}  # never the evaluation classifier
    assert seeds == set(range(SELECTION_SEED, SELECTION_SEED + 4))  # never the evaluation seeds
    tok = out / "pipeline_token" / "2_tiger_cat" / "default"
    summary = json.loads((tok / "train_summary.json").read_text())
    listed = summary["candidates"]
    assert len(listed) == 3 and sum(c["chosen"] for c in listed) == 1 and listed[summary["candidate"]]["chosen"]
    best = max(c["selection_accuracy"] for c in listed)
    assert listed[summary["candidate"]]["selection_accuracy"] == best
    assert all(len(c["selection_ci"]) == 2 and {"seed", "epochs", "best_loss", "stop"} <= set(c) for c in listed)
    assert len({c["seed"] for c in listed}) == 3
    from safetensors.torch import load_file

    chosen = load_file(tok / "candidates" / str(summary["candidate"]) / "learned_embeds.safetensors")["newclas"]
    assert torch.equal(load_file(tok / "learned_embeds.safetensors")["newclas"], chosen)


@pytest.mark.parametrize("candidates", [1, 2])
def test_snapshots_join_the_selection(tiny, tmp_path, candidates):
    """--select_every 2 over 4 epochs: each run's tokens after 2 and 4 epochs (epochs 1 and 3, counted from 0
    as in train_log.jsonl) are offered besides its kept token; the class's token is the offer most accurate
    on the selection seeds, written beside the others."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    args = ["--candidates", str(candidates), "--select_every", "2", "--select_size", "4", "--lr", "0.5"]
    args += ["--num_train_epochs", "4", "--early_stopping", "10", "--accuracy_stop", "1"]
    assert main([*tiny_args(tiny, out, *args), "--evaluate", "False"]) == 0
    tok = out / "pipeline_token" / "2_tiger_cat" / "default"
    summary = json.loads((tok / "train_summary.json").read_text())
    listed = summary["candidates"]
    assert len(listed) == candidates and [s["epoch"] for s in listed[0]["snapshots"]] == [1, 3]
    offers = [(c, None, c["selection_accuracy"], c["kept_token_chosen"]) for c in listed]
    offers += [(c, s["epoch"], s["selection_accuracy"], s["chosen"]) for c in listed for s in c["snapshots"]]
    assert sum(chosen for *_, chosen in offers) == 1 and sum(c["chosen"] for c in listed) == 1
    (owner, epoch, accuracy, _) = next(o for o in offers if o[3])
    assert accuracy == max(o[2] for o in offers) and epoch == summary["snapshot_epoch"]
    folder = tok if candidates == 1 else tok / "candidates" / str(summary["candidate"])
    files = [folder / s["file"] for s in owner["snapshots"]] + [folder / "learned_embeds.safetensors"]
    assert all(f.is_file() for f in files)
    chosen = folder / ("learned_embeds.safetensors" if epoch is None else f"snapshots/epoch{epoch:04d}.safetensors")
    if epoch is not None:  # counted from 0 like every epoch in the files (the web demo adds 1 for its page)
        assert summary["kept_token"].startswith(f"the token after epoch {epoch}'s update (a snapshot")
    assert torch.equal(load_file(tok / "learned_embeds.safetensors")["newclas"], load_file(chosen)["newclas"])
    snaps = [load_file(folder / s["file"])["newclas"] for s in owner["snapshots"]]
    assert not torch.equal(snaps[0], snaps[1])  # the token moved between the two snapshots


def test_one_runs_kept_token_is_kept_when_a_snapshot_wins(tiny, tmp_path, monkeypatch):
    """--candidates 1 --select_every: learned_embeds is the chosen token, so the run's kept token goes to
    kept_token.safetensors; here the selection is rigged so that the last snapshot wins."""
    from safetensors.torch import load_file

    import selection

    def rigged(cfg, sd, clf, options):
        return [dict(selection_accuracy=float(i == len(options) - 1), selection_ci=[0, 1]) for i in range(len(options))]

    monkeypatch.setattr(selection, "selection_accuracies", rigged)
    out = tmp_path / "out"
    args = tiny_args(tiny, out, "--select_every", "2", "--num_train_epochs", "4", "--lr", "0.5", "--evaluate", "False")
    assert main(args) == 0
    tok = out / "pipeline_token" / "2_tiger_cat" / "default"
    entry = json.loads((tok / "train_summary.json").read_text())["candidates"][0]
    assert entry["file"] == "kept_token.safetensors" and (tok / entry["file"]).is_file()
    assert entry["snapshots"][-1]["chosen"] and not entry["kept_token_chosen"]
    chosen = load_file(tok / entry["snapshots"][-1]["file"])["newclas"]
    assert torch.equal(load_file(tok / "learned_embeds.safetensors")["newclas"], chosen)


def test_class_batch_gives_the_same_tokens_and_resumes(tiny, tmp_path):
    batched, apart = tmp_path / "batched", tmp_path / "apart"
    assert main(tiny_args(tiny, batched, "--class_index", "1-3", "--class_batch", "2")) == 0
    assert main(tiny_args(tiny, apart, "--class_index", "1-3")) == 0
    from safetensors.torch import load_file

    tokens = sorted(batched.glob("pipeline_token/*/default/learned_embeds.safetensors"))
    assert len(tokens) == 3
    # At this run's lr (0.0005, two epochs) the tokens measured up to 2.3e-10 apart under OMP_NUM_THREADS 1 and
    # 2; 1e-5 leaves a wide margin and is still a hundredth of the 1e-3 the training moves them.
    for t in tokens:
        other = apart / t.relative_to(batched)
        assert torch.allclose(load_file(t)["newclas"], load_file(other)["newclas"], atol=1e-5)
    for m in sorted(batched.glob("pipeline_token/*/default/metrics.json")):  # evaluated together, the same images
        other = json.loads((apart / m.relative_to(batched)).read_text())
        mine = json.loads(m.read_text())
        assert mine["classifier"]["token_predictions"] == other["classifier"]["token_predictions"]
        for f in mine["images"]["token"] + mine["images"]["baseline"]:
            img = m.parents[3] / "img" / m.parts[-3] / "default" / f
            a, b = (np.asarray(Image.open(p), dtype=float) for p in (img, apart / img.relative_to(batched)))
            assert np.abs(a - b).max() <= 2
    rows = (batched / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and (batched / "results_gains_default.png").is_file()  # the gains chart beside it
    # A run killed after the first batch: class 3 has no token; only it is trained again.
    (batched / "pipeline_token" / "3_crane" / "default" / "learned_embeds.safetensors").unlink()
    before = {t: os.stat(t).st_mtime_ns for t in tokens[:2]}
    assert main(tiny_args(tiny, batched, "--class_index", "1-3", "--class_batch", "2", "--skip_exists")) == 0
    assert {t: os.stat(t).st_mtime_ns for t in tokens[:2]} == before
    assert (batched / "pipeline_token" / "3_crane" / "default" / "learned_embeds.safetensors").is_file()
