"""experiments/digits/original_defects.py: each variant is the original's computation with exactly the defects it
names switched off (and nothing the original hard-codes changed), and the table reads a run's files right."""

import dataclasses
import json

import pytest

from config import ORIGINAL_RULES, parse_args
from experiments.digits.original_defects import VARIANTS, summarize, table
from report import bounds
from stats import paired_gain

DEFECTS = {
    "no_clip": {"clip_before_backward"},
    "no_padding": {"pad_to_longest"},
    "no_decay": {"decay_vocabulary"},
    "smooth_clamp": {"plain_clamp"},
    "fp32_text_encoder": {"text_encoder_autocast"},
}


def resolved(variant: str) -> dict:
    cfg = parse_args(["--preset", "digits,original", "--class_index", "2", *VARIANTS[variant]])
    return dataclasses.asdict(cfg)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "original"])
def test_a_variant_switches_off_only_its_defects(variant):
    original, changed = resolved("original"), resolved(variant)
    differ = {k for k in original if original[k] != changed[k]}
    expected = set().union(*DEFECTS.values()) | {"accuracy_stop_keeps"} if variant == "no_defects" else DEFECTS[variant]
    assert differ == expected
    assert all(changed[k] == v for k, v in ORIGINAL_RULES.items())  # the original's rules stay


def write_run(folder, token_hits, baseline_hits, regimes):
    folder.mkdir(parents=True)
    preds = lambda hits: [1 if h else 7 for h in hits]  # noqa: E731  (class 2's target is digit 1)
    judge = dict(token_predictions=preds(token_hits), baseline_predictions=preds(baseline_hits))
    judge |= dict(token_accuracy=sum(token_hits) / 10, baseline_accuracy=sum(baseline_hits) / 10)
    gain, low, high = paired_gain(token_hits, baseline_hits)  # as run.py writes them
    judge |= dict(gain=gain, gain_ci=[low, high])
    metrics = dict(class_index=2, prompts=dict(baseline="A photo of a stick"), eval_classifier=judge)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "train_summary.json").write_text(json.dumps(dict(epochs=len(regimes), stop="100 epochs")))
    log = [dict(epoch=i, last_image_regime=r) for i, r in enumerate(regimes)]
    (folder / "train_log.jsonl").write_text("\n".join(json.dumps(e) for e in log) + "\n")


def test_summary_and_table_from_a_runs_files(tmp_path):
    write_run(tmp_path / "a", [True] * 6 + [False] * 4, [True] * 3 + [False] * 7, ["last image alone", "mixed", "mean"])
    write_run(tmp_path / "b", [True] * 5 + [False] * 5, [True] * 5 + [False] * 5, ["mixed"])
    a, b = summarize(tmp_path / "a"), summarize(tmp_path / "b")
    assert a["word"] == "stick" and a["gain"] == pytest.approx(0.3) and a["gain_ci"][0] < 0.3 < a["gain_ci"][1]
    assert (a["last_image_alone"], a["mixed"], b["mixed"]) == (1, 1, 1)
    lines = table({"original": {(2, 35): a, (4, 35): b}, "no_clip": {(2, 35): a}}, [2, 4], [35])
    assert len(lines) == 3  # header, rule, and only the variant with every class
    assert lines[2].startswith("| original | 35 | 30->60 (+30) | 50->50 (+0) | +15.0 [")
    assert lines[2].endswith(" | [-3,+31] |  |")  # the pooled interval [-0.030, +0.309], rounded outward
    # Against the original, class by class: +0 and -30 points.
    lines = table({"original": {(2, 35): a, (4, 35): b}, "no_clip": {(2, 35): a, (4, 35): a}}, [2, 4], [35])
    assert lines[3].startswith("| no_clip | 35 | 30->60 (+30) | 30->60 (+30) | +30.0 [+30,+30] |")
    assert lines[3].endswith(" | +15.0 [-176,+206] |")  # t with 1 degree of freedom: 15 +- 12.71 * 15
    # One class: its gain, no t interval; pooled over one class is the class's own paired interval.
    own = bounds(*a["gain_ci"], signed=True)
    assert table({"original": {(2, 35): a}}, [2], [35])[2] == f"| original | 35 | 30->60 (+30) | +30.0 | {own} |  |"
