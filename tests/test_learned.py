"""Every trained token says whether it learned: the kept token against the baseline prompt on the
selection seeds, judged by the training classifier alone, as images and under one-pixel shifts."""

import csv
import json

import pytest
import torch
from conftest import tiny_args

import selection
from config import SELECTION_SEED
from report import learned_line
from run import main


def test_shifted_moves_the_image_by_one_pixel_and_repeats_the_edge():
    img = torch.arange(16.0).view(1, 1, 4, 4)
    right = selection.shifted(img, 0, 1)
    assert torch.equal(right[..., 1:], img[..., :-1]) and torch.equal(right[..., 0], img[..., 0])
    up = selection.shifted(img, -1, 0)
    assert torch.equal(up[..., :-1, :], img[..., 1:, :]) and torch.equal(up[..., -1, :], img[..., -1, :])


@pytest.mark.parametrize(
    "token, token_shifted, learned, why",
    [
        ([True] * 18 + [False] * 2, [True] * 18 + [False] * 2, True, None),
        ([True] * 4 + [False] * 16, [True] * 4 + [False] * 16, False, "not clearly above zero"),
        ([True] * 18 + [False] * 2, [False] * 20, False, "vanishes when the images move by one pixel"),
    ],
)
def test_the_verdict_needs_both_gains_clearly_above_zero(
    tiny, tmp_path, monkeypatch, token, token_shifted, learned, why
):
    from workspace import load_classifiers, load_diffusion

    cfg = selection_cfg(tiny, tmp_path)
    classifiers = load_classifiers(cfg, False)
    sd = load_diffusion(cfg, classifiers, torch.device("cpu"), torch.float32)
    calls = iter([(token, token_shifted), ([False] * 20, [False] * 20)])  # the token's images, then the baseline's
    monkeypatch.setattr(selection, "hits", lambda *_a: next(calls))
    (v,) = selection.verdicts(cfg, sd, classifiers["classifier"], [(sd.init_embedding, 1, "tiger cat")])
    assert v["learned"] is learned and v["seeds"] == [SELECTION_SEED, SELECTION_SEED + 19]
    assert v["token_accuracy"] == sum(token) / 20 and v["baseline_accuracy"] == 0.0
    line = learned_line(1, "tiger cat", v)
    assert line.startswith("class 2 (tiger cat): " + ("learned (" if learned else "NOT LEARNED: "))
    assert why is None or why in line


def test_a_class_the_plain_prompt_already_draws_has_nothing_to_learn(tiny, tmp_path, monkeypatch):
    """An unambiguous class name: the baseline hits every selection seed, so no gain can be clearly above zero;
    the line says there was nothing to learn instead of NOT LEARNED and advice to train more."""
    from workspace import load_classifiers, load_diffusion

    cfg = selection_cfg(tiny, tmp_path)
    classifiers = load_classifiers(cfg, False)
    sd = load_diffusion(cfg, classifiers, torch.device("cpu"), torch.float32)
    calls = iter([([True] * 20, [True] * 20), ([True] * 20, [True] * 20)])
    monkeypatch.setattr(selection, "hits", lambda *_a: next(calls))
    (v,) = selection.verdicts(cfg, sd, classifiers["classifier"], [(sd.init_embedding, 1, "tiger cat")])
    assert v["nothing_to_learn"] and not v["learned"]
    line = learned_line(1, "tiger cat", v)
    assert line.startswith("class 2 (tiger cat): nothing to learn: the plain prompt already draws the class on every")
    assert "NOT LEARNED" not in line and "baseline 100% -> token 100%" in line


def selection_cfg(tiny, tmp_path, *extra):
    from config import parse_args

    return parse_args(tiny_args(tiny, tmp_path / "out", "--select_size", "20", *extra))


def test_only_the_training_classifier_and_the_selection_seeds_judge(tiny, tmp_path, capsys, judges_and_seeds):
    from classifiers import load_classifier

    seen = judges_and_seeds
    out = tmp_path / "out"
    args = tiny_args(tiny, out, "--select_size", "6", "--eval_classifier", tiny["clf_b"], "--evaluate", "False")
    assert main(args) == 0
    assert {name for kind, name in seen if kind == "judge"} == {load_classifier(tiny["clf"], "auto").name}
    assert {s for kind, ss in seen if kind == "seeds" for s in ss} == set(range(SELECTION_SEED, SELECTION_SEED + 6))
    summary = json.loads((out / "pipeline_token" / "2_tiger_cat" / "default" / "train_summary.json").read_text())
    v = summary["learned"]
    assert learned_line(1, "tiger cat", v) in capsys.readouterr().out  # printed after training
    row = next(csv.DictReader((out / "results.csv").open()))
    assert row["learned"] == str(v["learned"]) and float(row["sel_gain"]) == round(v["gain"], 4)
    assert float(row["sel_shifted_gain_low"]) == round(v["shifted_gain_ci"][0], 4)


def test_check_learned_off_and_its_seeds_kept_apart_from_the_evaluation(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--check_learned", "False", "--evaluate", "False")) == 0
    summary = json.loads((out / "pipeline_token" / "2_tiger_cat" / "default" / "train_summary.json").read_text())
    assert "learned" not in summary and "LEARNED" not in capsys.readouterr().out
    assert main(tiny_args(tiny, out, "--eval_seed", str(SELECTION_SEED))) == 2
    assert f"--eval_seed {SELECTION_SEED}: overlaps the selection seeds" in capsys.readouterr().err
