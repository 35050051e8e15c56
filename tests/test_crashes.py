"""kill -9 in the middle of the work a run does: during a class batch's training, during evaluation, during a
second candidate's training. Nothing half-written is left behind, and a rerun (with and without
--skip_exists True) writes tokens and predictions byte-identical to those of a run that was never killed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, tiny_args
from test_reliability import _all_files_readable

pytestmark = pytest.mark.slow

LONG = ["--num_train_epochs", "10", "--early_stopping", "100", "--accuracy_stop", "1"]
CLASSES = ["2_tiger_cat", "3_crane", "4_crane"]


def lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def token_dir(out, c: str):
    return out / "pipeline_token" / c / "default"


# (extra flags, the moment to kill: a condition on the output folder while the run is busy with that work,
# whether the rerun passes --skip_exists True)
CASES = {
    "class batch": (
        ["--class_index", "2-4", "--class_batch", "3", *LONG],
        lambda out: lines(token_dir(out, "3_crane") / "train_log.jsonl") >= 3,
        False,
    ),
    "evaluation": (
        ["--class_index", "2-4", "--class_batch", "3", "--test_size", "24", "--eval_batch_size", "2"],
        lambda out: (token_dir(out, "4_crane") / "train_summary.json").exists(),  # trained: evaluating now
        True,
    ),
    "candidates": (
        ["--class_index", "2", "--candidates", "3", "--select_size", "2", *LONG],
        lambda out: lines(token_dir(out, "2_tiger_cat") / "candidates" / "1" / "train_log.jsonl") >= 3,
        True,
    ),
}


def outcome(out, classes: list[str]) -> dict:
    """What a finished run leaves per class: its token file's bytes and its evaluation's predictions."""
    got = {}
    for c in classes:
        metrics = json.loads((token_dir(out, c) / "metrics.json").read_text())["classifier"]
        got[c] = ((token_dir(out, c) / "learned_embeds.safetensors").read_bytes(), metrics["token_predictions"])
    return got


@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_mid_work_leaves_no_broken_file_and_the_rerun_is_byte_identical(tiny, tmp_path, case):
    flags, busy, skip_exists = CASES[case]
    classes = CLASSES if "2-4" in flags else CLASSES[:1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clean, killed = tmp_path / "clean", tmp_path / "killed"

    def command(out):
        return [sys.executable, str(ROOT / "run.py"), *tiny_args(tiny, out, *flags)]

    assert subprocess.run(command(clean), env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not busy(killed):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run ended before it could be killed during the {case}"
    assert not (token_dir(killed, classes[-1]) / "metrics.json").exists()  # it really stopped mid-work
    _all_files_readable(killed)

    rerun = subprocess.run([*command(killed), "--skip_exists", str(skip_exists)], env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    _all_files_readable(killed)
    assert not list(killed.rglob(".*.tmp*")), "temporary files left after the rerun"
    assert outcome(killed, classes) == outcome(clean, classes)
