"""Every file and path a run is handed is checked before the work starts: damaged or foreign tokens,
paths taken by another kind of file, folders that are not models, class ranges; a refused run creates
nothing, and an interrupted one ends with its own line."""

import json
import shutil

import pytest
import torch
from conftest import tiny_args
from safetensors.torch import save_file

from run import main

CLASS = "2_tiger_cat"


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One trained and evaluated class on the tiny models (copied per test)."""
    out = tmp_path_factory.mktemp("trained") / "out"
    assert main(tiny_args(tiny, out)) == 0
    return out


def fresh(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    return out, out / "pipeline_token" / CLASS / "default" / "learned_embeds.safetensors"


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f.write_bytes(b""), "empty file, not a token; train the class again (--train True)"),
        (lambda f: f.write_bytes(b"\x00garbage that is no safetensors header"), "damaged token file ("),
        (lambda f: f.write_bytes(f.read_bytes()[:-7]), "damaged token file ("),
        (
            lambda f: save_file({"newclas": torch.zeros(7)}, str(f)),
            "not a token of this model (it needs 16 finite values, found 7",
        ),
        (lambda f: save_file({"newclas": torch.full((16,), float("nan"))}, str(f)), "finite values"),
        (lambda f: save_file({}, str(f)), "holds no tensor, not a token file"),
    ],
)
def test_a_token_that_cannot_be_used_is_one_line_before_any_image(tiny, trained, tmp_path, capsys, damage, message):
    out, token = fresh(trained, tmp_path)
    damage(token)
    eval_dir = out / "img" / CLASS / "default" / "eval"
    before = sorted(p.name for p in eval_dir.rglob("*"))
    assert main(tiny_args(tiny, out, "--train", "False")) == 2
    line = error_line(capsys)
    assert line.startswith(f"run.py: error: {token}: ") and message in line, line
    assert sorted(p.name for p in eval_dir.rglob("*")) == before  # no image made


def test_skip_exists_does_a_class_with_an_unreadable_token_again(tiny, trained, tmp_path, capsys):
    out, token = fresh(trained, tmp_path)
    token.write_bytes(b"not a token")
    assert main(tiny_args(tiny, out, "--skip_exists", "True")) == 0
    err = capsys.readouterr().err
    assert f"run.py: note: {token}: damaged token file (" in err and f"doing class {CLASS} again" in err
    from safetensors.torch import load_file

    assert load_file(str(token))["newclas"].shape == (16,)  # trained again, readable


def test_skip_exists_evaluates_again_when_metrics_are_damaged(tiny, trained, tmp_path, capsys):
    out, _ = fresh(trained, tmp_path)
    metrics = out / "pipeline_token" / CLASS / "default" / "metrics.json"
    metrics.write_text("{not json")
    assert main(tiny_args(tiny, out, "--skip_exists", "True", "--train", "False")) == 0
    assert f"run.py: note: {metrics}: cannot be read as JSON (" in capsys.readouterr().err
    assert "token_accuracy" in json.loads(metrics.read_text())["classifier"]


@pytest.mark.parametrize(
    "blocker, kind",
    [
        ("pipeline_token/2_tiger_cat/default", "file"),  # a file where the class folder goes
        ("pipeline_token/2_tiger_cat", "file"),
        ("pipeline_token/2_tiger_cat/default/learned_embeds.safetensors", "folder"),
        ("img/2_tiger_cat/default/train", "file"),
        ("results.csv", "folder"),
        ("embeddings", "file"),  # the folder for ComfyUI and AUTOMATIC1111
        ("embeddings/disco-2_tiger_cat.safetensors", "folder"),
        ("pipeline_token/2_tiger_cat/default/README.md", "folder"),  # the model card
    ],
)
def test_a_path_taken_by_another_kind_of_file_stops_the_run_before_training(tiny, tmp_path, capsys, blocker, kind):
    out = tmp_path / "out"
    path = out / blocker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if kind == "folder" else path.write_text("mine")
    assert main(tiny_args(tiny, out)) == 2
    want = "file" if kind == "folder" else "folder"
    assert error_line(capsys) == (
        f"run.py: error: {path}: a {kind} stands where the run writes a {want}; move it or change --output_path"
    )
    assert not list(out.rglob("train_log.jsonl")) and not list(out.rglob("*.png"))  # nothing trained


@pytest.mark.parametrize(
    "metadata, why",
    [
        (
            dict(disco_class="5_crane", disco_exp_id="default"),
            "written by another run (class 5_crane, experiment default)",
        ),
        (dict(disco_class=CLASS, disco_exp_id="other"), f"written by another run (class {CLASS}, experiment other)"),
        (None, "not written by a DisCo run (no class and experiment in its metadata)"),
    ],
)
def test_another_runs_file_in_the_embeddings_folder_stops_the_run_before_training(
    tiny, tmp_path, capsys, metadata, why
):
    """A file of another run (or of none: e.g. a user's own embedding of that name) is never replaced."""
    out = tmp_path / "out"
    theirs = out / "embeddings" / f"disco-{CLASS}.safetensors"
    theirs.parent.mkdir(parents=True)
    save_file({"emb_params": torch.ones(1, 16)}, str(theirs), metadata=metadata)
    before = theirs.read_bytes()
    assert main(tiny_args(tiny, out)) == 2
    assert error_line(capsys) == f"run.py: error: {theirs}: {why}; move it or change --output_path"
    assert theirs.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["embeddings"]


def test_a_class_range_is_checked_without_expanding_it(tiny, tmp_path, capsys):
    assert main(tiny_args(tiny, tmp_path / "out", "--class_index", "3-100000000000")) == 2
    assert error_line(capsys) == "run.py: error: --class_index '3-100000000000': 6 is out of range; allowed 1..5"


def test_a_folder_that_is_not_a_pipeline_says_what_it_lacks(tiny, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(tiny_args(tiny, tmp_path / "out", "--sd_model", str(empty))) == 2
    assert error_line(capsys) == (
        f"run.py: error: --sd_model {empty}: not a diffusers pipeline folder (no model_index.json in it)"
    )
    nameless = tmp_path / "nameless"
    shutil.copytree(tiny["sd"], nameless)
    index = json.loads((nameless / "model_index.json").read_text())
    (nameless / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "_class_name"}))
    assert main(tiny_args(tiny, tmp_path / "out", "--sd_model", str(nameless))) == 2
    assert error_line(capsys) == (
        f"run.py: error: --sd_model {nameless}: its model_index.json names no pipeline class (_class_name)"
    )


@pytest.mark.parametrize("extra", [["--lr", "0"], ["--train", "False"], ["--class_index", "9"]])
def test_a_refused_run_creates_nothing(tiny, tmp_path, capsys, extra):
    """Refused at parsing, for lack of a token, or for a class out of range: no output folder appears."""
    out = tmp_path / "new" / "out"
    assert main(tiny_args(tiny, out, *extra)) == 2
    error_line(capsys)
    assert not (tmp_path / "new").exists()


def test_an_output_path_under_a_file_is_refused(tiny, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(tiny_args(tiny, tmp_path / "file" / "out")) == 2
    assert error_line(capsys) == f"run.py: error: --output_path {str(tmp_path / 'file' / 'out')!r}: " + (
        f"{tmp_path / 'file'} is a file, not a folder"
    )


def test_the_interrupted_line_is_the_last_one(tiny, tmp_path, capsys, monkeypatch):
    """Ctrl-C while bars are open: they are closed first, so no bar is drawn after the message."""
    import gc

    from tqdm.auto import tqdm

    import workspace

    def interrupted(*_a, **_k):
        bar = tqdm(total=10, desc="epochs")
        bar.update(3)
        raise KeyboardInterrupt

    monkeypatch.setattr(workspace, "train_batch", interrupted)
    assert main(tiny_args(tiny, tmp_path / "out", "--class_index", "2,3")) == 130
    gc.collect()
    err = capsys.readouterr().err.rstrip("\n").replace("\r", "\n").splitlines()
    assert err[-1] == "run.py: interrupted; finished classes are kept (resume: --skip_exists True)", err[-3:]
