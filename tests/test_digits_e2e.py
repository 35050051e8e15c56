"""The quick-start demo on the shipped digits world: DisCo raises accuracy as judged by an
independent classifier, on evaluation seeds that training never saw."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from config import TEST_SEED


def demo(tmp_path, class_index: int, *extra: str) -> tuple[dict, float]:
    cmd = [sys.executable, str(ROOT / "run.py"), "--preset", "digits", "--class_index", str(class_index)]
    cmd += ["--train", "True", "--evaluate", "True", "--output_path", str(tmp_path), *extra]
    start = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = next((tmp_path / "pipeline_token").glob(f"{class_index}_*/default/metrics.json"))
    return json.loads(metrics.read_text()), time.time() - start


@pytest.mark.slow
@pytest.mark.parametrize("class_index", [2])  # digit 1 "stick", the quick-start demo (100 epochs: ~2 min)
def test_token_beats_the_ambiguous_word(tmp_path, class_index):
    m, seconds = demo(tmp_path, class_index)
    judge = m["eval_classifier"]  # not the classifier the token was trained against
    assert m["seeds"] == list(range(TEST_SEED, TEST_SEED + 100))  # test seeds: never trained or tuned on
    gain = judge["token_accuracy"] - judge["baseline_accuracy"]
    print(f"class {class_index}: {judge['baseline_accuracy']:.0%} -> {judge['token_accuracy']:.0%} in {seconds:.0f} s")
    # Measured with the default training seed: 54% -> 82% (the README's quick start; judge v2).
    # Other training seeds gain less ("stick" +4 with seed 36): this checks the default run.
    assert gain >= 0.15, judge
    assert (tmp_path / "img" / m["class_name"].join([f"{class_index}_", ""]) / "default" / "grid.png").is_file()
