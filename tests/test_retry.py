"""--retry_below M with --candidates K: one run per class, then another candidate only for the classes whose
best token so far gains less than M points on the selection seeds (as images, and under one-pixel shifts),
up to K; the classes that need one train together; train_summary.json says why each next one was or was
not started."""

import json

import pytest
import torch
from conftest import tiny_args
from safetensors.torch import load_file

import selection
import train
from run import main


def verdict(base: float, gain: float, shifted_base: float | None = None, shifted_gain: float | None = None) -> dict:
    shifted_base = base if shifted_base is None else shifted_base
    shifted_gain = gain if shifted_gain is None else shifted_gain
    return dict(baseline_accuracy=base, gain=gain, shifted_baseline_accuracy=shifted_base, shifted_gain=shifted_gain)


@pytest.mark.parametrize(
    "v, margin, why",
    [
        (verdict(0.5, 0.10), 10, None),  # exactly the margin
        (verdict(0.5, 0.08), 10, "its selection gain +8 is below +10 points"),
        (verdict(0.5, 0.20, shifted_gain=0.04), 10, "its shifted gain +4 is below +10 points"),
        (verdict(0.95, 0.05), 10, None),  # all the room there was: the token draws the class on every seed
        (verdict(1.0, 0.0), 10, None),  # the plain prompt already draws it: nothing to retry for
        (verdict(0.95, 0.0), 10, "its selection gain +0 is below +5 points"),
        (verdict(0.5, -0.1), 0, "its selection gain -10 is below +0 points"),
    ],
)
def test_short_of_the_margin_is_capped_by_the_room_left(v, margin, why):
    assert selection.short_of(v, margin) == why


def rig_verdicts(monkeypatch, gains: dict) -> list:
    """Each class's verdict gain by target and by how often that class was judged (its list, in order);
    the real verdict otherwise. Returns the (target, gain) pairs handed out."""
    real, handed, seen = selection.verdicts, [], {}

    def rigged(cfg, sd, clf, chosen):
        out = real(cfg, sd, clf, chosen)
        for v, (_tok, target, _name) in zip(out, chosen):
            k = seen[target] = seen.get(target, -1) + 1
            g = gains[target][min(k, len(gains[target]) - 1)]
            v.update(baseline_accuracy=0.5, gain=g, shifted_baseline_accuracy=0.5, shifted_gain=g)
            handed.append((target, g))
        return out

    monkeypatch.setattr(selection, "verdicts", rigged)
    return handed


def runs_per_call(monkeypatch) -> list:
    calls, real = [], train.train_runs
    monkeypatch.setattr(
        train,
        "train_runs",
        lambda cfg, sd, clf, runs, *a, **k: calls.append([r.label for r in runs]) or real(cfg, sd, clf, runs, *a, **k),
    )
    return calls


def test_only_the_classes_short_of_the_margin_train_another_candidate(tiny, tmp_path, monkeypatch, capsys):
    # Class 2 (target 1) falls short after candidate 0 and reaches the margin after candidate 1; class 3
    # (target 2) reaches it at once.
    handed = rig_verdicts(monkeypatch, {1: [0.05, 0.3], 2: [0.25]})
    calls = runs_per_call(monkeypatch)
    out = tmp_path / "out"
    args = ["--class_index", "2,3", "--class_batch", "2", "--candidates", "3", "--retry_below", "10"]
    assert main(tiny_args(tiny, out, *args, "--select_size", "4", "--evaluate", "False")) == 0
    assert calls == [["2_tiger_cat candidate 0", "3_crane candidate 0"], ["2_tiger_cat candidate 1"]]
    assert handed[:3] == [(1, 0.05), (2, 0.25), (1, 0.3)]
    assert (
        "class 2_tiger_cat: its selection gain +5 is below +10 points; training candidate 1" in capsys.readouterr().err
    )

    first = json.loads((out / "pipeline_token" / "2_tiger_cat" / "default" / "train_summary.json").read_text())
    assert first["candidates_trained"] == 2 and len(first["candidates"]) == 2
    assert [r["after_candidate"] for r in first["retries"]] == [0, 1]
    assert first["retries"][0]["next_candidate"] == "started: its selection gain +5 is below +10 points (the margin 10)"
    assert first["retries"][1]["next_candidate"] == "not started: the best token reaches the margin 10"
    second = json.loads((out / "pipeline_token" / "3_crane" / "default" / "train_summary.json").read_text())
    assert second["candidates_trained"] == 1 and len(second["candidates"]) == 1
    assert second["retries"] == [
        dict(after_candidate=0, next_candidate="not started: the best token reaches the margin 10")
    ]
    # The chosen token is the best offer among the candidates trained, written as the class's token.
    tok = out / "pipeline_token" / "2_tiger_cat" / "default"
    chosen = load_file(tok / "candidates" / str(first["candidate"]) / "learned_embeds.safetensors")["newclas"]
    assert torch.equal(load_file(tok / "learned_embeds.safetensors")["newclas"], chosen)
    assert first["candidates"][first["candidate"]]["selection_accuracy"] == max(
        c["selection_accuracy"] for c in first["candidates"]
    )


def test_retries_stop_at_k_and_each_candidate_is_plain_candidates_own(tiny, tmp_path, monkeypatch):
    """A class that never reaches the margin trains K candidates, one round each; candidate k is the run that
    plain --candidates K trains as its candidate k (the same noise seed, up to float rounding)."""
    rig_verdicts(monkeypatch, {1: [0.0]})
    calls = runs_per_call(monkeypatch)
    adaptive, plain = tmp_path / "adaptive", tmp_path / "plain"
    common = ["--candidates", "3", "--select_size", "4", "--evaluate", "False", "--lr", "0.5"]
    assert main(tiny_args(tiny, adaptive, *common, "--retry_below", "50")) == 0
    assert main(tiny_args(tiny, plain, *common)) == 0
    assert [len(c) for c in calls] == [1, 1, 1, 3]
    tok = adaptive / "pipeline_token" / "2_tiger_cat" / "default"
    summary = json.loads((tok / "train_summary.json").read_text())
    assert summary["candidates_trained"] == 3
    last = summary["retries"][-1]["next_candidate"]
    assert last == "not started: its selection gain +0 is below +50 points, but --candidates 3 were trained"
    twin = plain / "pipeline_token" / "2_tiger_cat" / "default"
    for k in range(3):
        a, b = (load_file(t / "candidates" / str(k) / "learned_embeds.safetensors")["newclas"] for t in (tok, twin))
        assert torch.allclose(a, b, atol=3e-4), (k, (a - b).abs().max())  # tests/test_many_runs.py's KEPT_ATOL


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--candidates", "3", "--retry_below", "-1"], "--retry_below -1.0: must be a gain in points, 0..100"),
        (["--candidates", "3", "--retry_below", "101"], "--retry_below 101.0: must be a gain in points, 0..100"),
        (["--retry_below", "10"], "--retry_below 10.0: needs --candidates 2 or more (the most runs per class)"),
        (["--retry_below", "10", "--train", "False"], "--retry_below 10.0: needs --train True"),
        (["--candidates", "0", "--retry_below", "10"], "--candidates 0: must be a positive integer"),
    ],
)
def test_a_margin_or_k_that_makes_no_sense_is_one_line(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"run.py: error: {message}") and err.count("\n") == 1
    assert not out.exists()
