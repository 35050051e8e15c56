"""Input a new user tries: an output folder that cannot be made, a classifier folder missing a
file, several processes drawing progress bars."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_args

from run import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("run.py: error: "), err
    return err


@pytest.mark.parametrize("where", ["under_a_file", "/proc/nowhere", "a_file"])
def test_output_path_that_cannot_be_created_is_one_line_before_any_model(tiny, tmp_path, capsys, where):
    (tmp_path / "file").write_text("x")
    out = {"under_a_file": tmp_path / "file" / "out", "a_file": tmp_path / "file"}.get(where, where)
    # Models that cannot load: the output path must be refused first.
    args = tiny_args(tiny, out, "--sd_model", "nobody/no-such-model", "--classifier", "nobody/no-such-classifier")
    assert main(args) == 2
    reason = f"{tmp_path / 'file'} is a file, not a folder" if where != "/proc/nowhere" else "cannot create or write"
    assert one_line_error(capsys).startswith(f"run.py: error: --output_path '{out}': {reason}")


def test_output_path_is_checked_but_not_created_by_validation(tmp_path):
    from config import parse_args

    out = tmp_path / "a" / "b"
    parse_args(["--output_path", str(out), "--class_index", "1"])
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())  # the write probe left nothing


def test_classifier_folder_without_preprocessor_config_names_the_file(tiny, tmp_path, capsys):
    folder = tmp_path / "clf"
    shutil.copytree(tiny["clf"], folder)
    (folder / "preprocessor_config.json").unlink()
    assert main(tiny_args(tiny, tmp_path / "out", "--classifier", str(folder))) == 2
    err = one_line_error(capsys)
    assert f"--classifier {folder}: no preprocessor_config.json there" in err and ".save_pretrained(" in err
    assert "hub" not in err.replace("hub id", "")  # not "the hub cannot be reached"


def test_classifier_folder_without_config_names_the_file(tiny, tmp_path, capsys):
    folder = tmp_path / "clf"
    shutil.copytree(tiny["clf"], folder)
    (folder / "config.json").unlink()
    assert main(tiny_args(tiny, tmp_path / "out", "--eval_classifier", str(folder))) == 2
    assert f"--eval_classifier {folder}: no config.json there" in one_line_error(capsys)


def test_only_the_main_process_draws_progress_bars(tiny, tmp_path):
    """Two processes (accelerate's launcher, on CPU), two classes each: every bar on stderr is the
    main process's (its classes 1 and 3), none of the other process's (classes 2 and 4)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = tiny_args(tiny, tmp_path / "out", "--class_index", "1-4", "--num_train_epochs", "1", "--test_size", "1")
    r = subprocess.run([*launch, str(ROOT / "run.py"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    descs = re.findall(r"([\w.-]+):\s+\d+%\|", r.stderr)  # each bar redraw: "<desc>:  50%|█████     | 1/2 ..."
    assert {"classes", "1_tabby", "3_crane"} <= set(descs), r.stderr[-2000:]  # the main process's bars
    assert not {"2_tiger_cat", "4_crane"} & set(descs), r.stderr[-2000:]  # none of the other's


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--candidates", "0"], "--candidates"),
        (["--class_batch", "0"], "--class_batch"),
        (["--select_size", "0"], "--select_size"),
        (["--candidates", "-2"], "--candidates"),
        (["--class_batch", "-1"], "--class_batch"),
        (["--candidates", "5", "--train", "False"], "--candidates"),
        (["--candidates", "2", "--preset", "original"], "--candidates"),
        (["--class_batch", "2", "--decay_vocabulary", "True"], "--decay_vocabulary"),
        (["--candidates", "2", "--eval_seed", "500000"], "--eval_seed"),
        (["--select_every", "-1"], "--select_every"),
        (["--select_every", "10", "--train", "False"], "--select_every"),
        (["--select_every", "10", "--eval_seed", "500000"], "--eval_seed"),
        (["--preset", "digits,nosuch"], "--preset"),
        (["--report_to", "comet"], "--report_to"),
    ],
)
def test_many_runs_bad_input_is_one_line_before_any_model(tmp_path, capsys, args, flag):
    """Checked at parsing: models that do not exist are never reached."""
    argv = ["--sd_model", "nobody/no-such-model", "--classifier", "nobody/nothing", "--output_path", str(tmp_path)]
    assert main([*argv, *args]) == 2
    assert one_line_error(capsys).startswith(f"run.py: error: {flag} ")
