"""95% intervals: known values from the literature, degenerate cases, and where they appear in the outputs."""

import csv
import json
import math

import pytest
from conftest import tiny_args

from config import GENERATE_SEED_OFFSET, PRESETS, TEST_SEED, VALIDATION_SEED, RunConfig, parse_args
from report import bounds, format_table, mean_gains, report_line
from run import main
from stats import mean_interval, paired_gain, wilson


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # ten seeds, by hand from (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.95996
        (7, 10, 0.3968, 0.8922),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_matches_published_values(k, n, low, high):
    assert wilson(k, n) == pytest.approx((low, high), abs=1e-4)


def outcomes(both: int, only_first: int, only_second: int, neither: int) -> tuple[list[bool], list[bool]]:
    first = [True] * (both + only_first) + [False] * (only_second + neither)
    second = [True] * both + [False] * only_first + [True] * only_second + [False] * neither
    return first, second


def test_paired_gain_matches_the_published_example():
    # Fagerland, Lydersen & Laake (2017), ch. 8, Cavo et al. (2012): table (59, 6 / 16, 80); Newcombe's
    # square-and-add interval -0.0621 (-0.1186 to -0.0046), as the R package contingencytables tests it.
    gain, low, high = paired_gain(*outcomes(59, 6, 16, 80))
    assert (gain, low, high) == pytest.approx((-0.0621, -0.1186, -0.0046), abs=1e-4)


def test_pairing_narrows_the_interval():
    # Same margins (60% vs 40%), strongly correlated outcomes vs uncorrelated ones: pairing must pay.
    _, lo_c, hi_c = paired_gain(*outcomes(40, 20, 0, 40))
    _, lo_u, hi_u = paired_gain(*outcomes(24, 36, 16, 24))
    assert hi_c - lo_c < hi_u - lo_u and lo_c > 0


@pytest.mark.parametrize(
    "token, baseline",
    [([True] * 10, [True] * 10), ([False] * 10, [False] * 10), ([True], [False]), ([False], [False]), ([True], [True])],
)
def test_degenerate_cases_give_finite_honest_intervals(token, baseline):
    gain, low, high = paired_gain(token, baseline)
    assert all(math.isfinite(x) for x in (gain, low, high))
    assert -1 <= low <= gain <= high <= 1 and high - low > 0.2  # a zero-width interval would claim certainty


def test_paired_gain_rejects_unpaired_input():
    with pytest.raises(ValueError):
        paired_gain([True, False], [True])


def test_mean_interval_is_students_t():
    mean, low, high = mean_interval([0.1, 0.2, 0.3])
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 df) x sd / sqrt(n)
    assert (mean, low, high) == pytest.approx((0.2, 0.2 - half, 0.2 + half), abs=1e-6)
    assert mean_interval([0.3]) == (0.3, None, None)
    assert mean_interval([0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))


def test_seed_ranges_are_disjoint_and_the_digits_preset_reports_on_test_seeds():
    digits = parse_args(["--preset", "digits"])
    assert digits.eval_seed == TEST_SEED and digits.test_size == PRESETS["digits"]["test_size"]
    training_end = RunConfig.seed + 100 + digits.num_train_epochs  # seed, re-seeds after loss jumps, fresh noises
    assert training_end < VALIDATION_SEED < VALIDATION_SEED + 1000 <= TEST_SEED
    assert TEST_SEED + digits.test_size < GENERATE_SEED_OFFSET
    assert parse_args([]).eval_seed == 0 and parse_args([]).test_size == 10  # the paper's protocol for SD 1.4


def test_report_line_carries_the_intervals():
    res = dict(baseline_accuracy=0.46, token_accuracy=0.76, baseline_ci=[0.364, 0.559], token_ci=[0.672, 0.830])
    res |= dict(gain=0.30, gain_ci=[0.191, 0.405])
    line = report_line(dict(class_index=2, class_name="stick", classifier=res))
    assert line == "class 2 (stick): [classifier] baseline 46% [36-56] -> token 76% [67-83], gain +30 [+19,+41]"
    assert (
        bounds(0.668, 0.8301) == "[66-84]" and bounds(-0.0049, 0.0, signed=True) == "[-1,+0]"
    )  # outward, never narrower


def test_outputs_carry_intervals_and_the_mean_gain(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--class_index", "2,5", "--eval_classifier", tiny["clf_b"])) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "pipeline_token" / "2_tiger_cat" / "default" / "metrics.json").read_text())
    for role in ("classifier", "eval_classifier"):
        r = m[role]
        assert r["baseline_ci"][0] <= r["baseline_accuracy"] <= r["baseline_ci"][1]
        assert r["gain_ci"][0] <= r["gain"] == pytest.approx(r["token_accuracy"] - r["baseline_accuracy"])
        assert f"[{role}] baseline" in printed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["class_index"] for r in rows] == ["2", "5"] and rows[0]["seeds"] == "2"
    for prefix in ("", "eval_"):
        assert (
            float(rows[0][prefix + "gain_low"])
            <= float(rows[0][prefix + "gain"])
            <= float(rows[0][prefix + "gain_high"])
        )
    summary = json.loads((out / "results_summary.json").read_text())["default"]
    gains = [float(r["eval_gain"]) for r in rows]
    judge = summary["eval_classifier"]
    assert summary["classes"] == [2, 5] and judge["mean_gain"] == pytest.approx(sum(gains) / 2, abs=1e-4)
    assert judge["over_classes"][0] <= judge["mean_gain"] <= judge["over_classes"][1]
    assert judge["pooled_seeds"][0] < judge["mean_gain"] < judge["pooled_seeds"][1]  # 4 pairs: never certain
    assert "mean gain over 2 classes [eval_classifier]" in printed and "nan" not in printed.lower()


def test_table_reads_rows_of_an_older_results_csv():
    old = dict(class_index="3", class_name="crane", baseline_accuracy="0.5", token_accuracy="0.7")
    text = format_table([old])
    assert "50%" in text and "70%" in text and "mean gain" not in text


def test_mean_gain_over_classes_that_all_gained_the_same():
    # Controls: every class 10/10 with both prompts. The t interval collapses; the pooled one must not.
    row = dict(class_index="1", class_name="two", gain="0.0", gain_low="-0.28", gain_high="0.28")
    row |= dict(_classifier_token_hits=[True] * 10, _classifier_baseline_hits=[True] * 10)
    g = mean_gains([row, row | dict(class_index="2")])["classifier"]
    assert g["n_classes"] == 2 and g["mean_gain"] == 0 and g["over_classes"] == [0, 0]
    assert g["pooled_seeds"] == pytest.approx([-0.1611, 0.1611], abs=1e-4)  # Wilson 20/20 = [0.8389, 1]
    assert "mean gain over 2 classes [classifier]: +0 [+0,+0]" in format_table([row, row | dict(class_index="2")])
