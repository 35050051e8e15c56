"""The web demo's parts without a server or models: input checks (demo.inputs), the output folder
(demo.store) and what the handlers show (demo.handlers)."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from browser_setup import NO_BROWSER, browser_outcome
from conftest import ROOT

from config import parse_args
from demo.inputs import Limits, parse_class, positive, prompt_text, train_settings, whole
from demo.store import Store
from utils import UsageError

LABELS = ["loop", "stick", "two", "curl", "four", "five", "loop", "stick", "curl", "nine"]  # the digits world


@pytest.fixture
def cfg(tmp_path):
    return parse_args(["--preset", "digits", "--output_path", str(tmp_path / "out"), "--num_train_epochs", "3"])


def fake_token(store: Store, run: str) -> Path:
    token = store.tokens / run / "learned_embeds.safetensors"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_bytes(b"token")
    return token


@pytest.mark.parametrize(
    ("found", "ci", "outcome"),
    [(True, None, "run"), (True, "true", "run"), (False, None, "skip"), (False, "", "skip")]
    + [(False, "false", "skip"), (False, "true", "fail"), (False, "1", "fail")],
)
def test_browser_tests_without_a_browser_skip_except_under_ci(found, ci, outcome):
    assert browser_outcome(found, {} if ci is None else {"CI": ci}) == outcome
    assert "apt-get install chromium chromium-driver" in NO_BROWSER and "\n" not in NO_BROWSER


# ---------------------------------------------------------------- input checks
@pytest.mark.parametrize("value", ["abc", "NaN", "nan", "Inf", "-inf", "1e999", math.nan, math.inf, "", None, "2.5"])
def test_text_and_non_finite_numbers_get_the_out_of_range_message(value):
    with pytest.raises(UsageError) as bad:
        whole(value, "epochs", 1, 100, " (the server's --max_epochs)")
    with pytest.raises(UsageError) as out_of_range:
        whole(0, "epochs", 1, 100, " (the server's --max_epochs)")
    assert str(bad.value).split(": ", 1)[1] == str(out_of_range.value).split(": ", 1)[1]
    assert "\n" not in str(bad.value) and "Traceback" not in str(bad.value)
    if value != "2.5":
        with pytest.raises(UsageError, match=r"^lr .*: must be a number above 0 and at most 10$"):
            positive(value, "lr", 10)


def test_numbers_as_text_or_numbers_are_accepted(cfg):
    assert whole(" 30 ", "epochs", 1, 100) == 30 and whole(30.0, "epochs", 1, 100) == 30
    assert positive("0.06", "lr", 10) == 0.06
    settings = train_settings(cfg, Limits(), "3", "0.06", 35, "15")
    assert settings == dict(num_train_epochs=3, lr=0.06, seed=35, grad_steps=15)
    with pytest.raises(UsageError, match=r"^grad_steps 16: must be a whole number in 1\.\.15"):
        train_settings(cfg, Limits(), 3, 0.06, 35, 16)
    assert prompt_text(" a drawing of S_c stick ", "newclas", 300) == "a drawing of newclas stick"


@pytest.mark.parametrize(
    "text, index_or_message",
    [
        ("2: stick", 1),
        ("2", 1),
        ("four", 4),
        ("STICK", "class 'STICK' is ambiguous: use class 2 or 8"),
        ("11", "class '11': 11 is out of range; allowed 1..10"),
        ("0", "class '0': indices are 1-based"),
        ("no such class", "class 'no such class': not a class of the classifier"),
        ("", "class '': pick a class from the list"),
    ],
)
def test_classes_are_resolved_by_run_pys_own_check(cfg, text, index_or_message):
    if isinstance(index_or_message, int):
        assert parse_class(cfg, LABELS, text) == index_or_message
    else:
        with pytest.raises(UsageError) as e:
            parse_class(cfg, LABELS, text)
        assert str(e.value).startswith(index_or_message) and "--class" not in str(e.value)


# ---------------------------------------------------------------- the output folder
def test_two_trainings_of_a_class_get_two_run_folders(cfg):
    store = Store(cfg.output_path, LABELS)
    (cfg_a, a), (cfg_b, b) = store.new_run(cfg, 1), store.new_run(cfg, 1)
    assert a.token_dir != b.token_dir and a.token_dir.is_dir() and b.token_dir.is_dir()
    assert cfg_a.exp_id.startswith("e3_lr0.06_s35_g15_") and len(cfg_a.exp_id.rsplit("_", 1)[1]) == 6
    assert a.img_dir == store.out / "img" / "2_stick" / cfg_a.exp_id and cfg_b.exp_id == b.token_dir.name


def test_the_listing_is_read_afresh(cfg):
    store = Store(cfg.output_path, LABELS)
    assert store.runs() == []
    fake_token(store, "8_stick/e1_x")
    fake_token(store, "2_stick/e3_y")
    assert store.runs() == ["2_stick/e3_y", "8_stick/e1_x"]  # by class index


def test_the_page_lists_tokens_trained_after_the_start(cfg):
    """What every page load runs (Handlers.token_lists): the Compare, Use and Results lists."""
    from demo.handlers import Handlers

    store = Store(cfg.output_path, LABELS)
    handlers = Handlers(SimpleNamespace(store=store, labels=LABELS, cfg=cfg))
    assert [d.choices for d in handlers.token_lists(None, None, None)] == [[]] * 3
    fake_token(store, "2_stick/e3_new")
    lists = handlers.token_lists(None, "2_stick/gone", None)
    assert [d.value for d in lists] == ["2_stick/e3_new"] * 3
    assert all([c[0] for c in d.choices] == ["2_stick/e3_new"] for d in lists)


def test_long_names_leak_no_server_path(cfg):
    store = Store(cfg.output_path, LABELS)
    for name in ["a" * 300, "x/" * 200 + "y", "b" * 5000]:
        with pytest.raises(UsageError) as e:
            store.file(name)
        assert str(store.out) not in str(e.value) and "/tmp" not in str(e.value) and len(str(e.value)) < 200


def test_links_out_of_the_output_folder_are_refused_before_training_and_serving(cfg, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = Store(cfg.output_path, LABELS)
    store.tokens.mkdir()
    (store.tokens / "2_stick").symlink_to(outside)  # a class folder replaced by a link out
    with pytest.raises(UsageError, match=r"^pipeline_token/2_stick/e3_.*: leads out of the output folder"):
        store.new_run(cfg, 1)
    assert list(outside.iterdir()) == []  # nothing written there
    (store.out / "img").mkdir()
    (store.out / "img" / "3_two").symlink_to(outside)  # the images' folder too
    with pytest.raises(UsageError, match="leads out of the output folder"):
        store.new_run(cfg, 2)
    (outside / "run").mkdir()
    (outside / "run" / "learned_embeds.safetensors").write_bytes(b"x")
    assert store.runs() == []  # not listed
    with pytest.raises(UsageError, match="outside the output folder"):
        store.run_paths("2_stick/run")
    fake_token(store, "4_curl/ok")
    (store.tokens / "4_curl" / "ok" / "train_log.jsonl").symlink_to(outside / "run" / "learned_embeds.safetensors")
    assert [f.name for f in store.open_run("4_curl/ok")["files"]] == ["learned_embeds.safetensors"]
    (store.out / "results.csv").symlink_to(outside / "run" / "learned_embeds.safetensors")
    with pytest.raises(UsageError, match="^results.csv: leads out"):
        store.new_run(cfg, 4)
    assert store.results()[1] == []


def test_messages_and_summaries_count_epochs_from_1():
    from demo.handlers import curves, log_rows, summary_text

    summary = dict(epochs=3, seconds=4.2, stop="num_train_epochs", kept_token="the token after epoch 2's update")
    assert (
        summary_text(summary, 3) == "3 of 3 epochs in 4 s; stop: all epochs ran; kept the token after epoch 3's update"
    )
    log = [dict(epoch=0, loss=2.5, accuracy=0.5, grad_norm=0.1), dict(epoch=1, loss=2.0, accuracy=0.75, grad_norm=0.2)]
    assert [row[0] for row in log_rows(log)] == [1, 2]
    loss, accuracy = curves(log)
    assert loss["data"] == [[1, 2.5], [2, 2.0]] and accuracy["data"] == [[1, 0.5], [2, 0.75]]
    assert accuracy["columns"] == ["epoch", "accuracy"] and accuracy["mark"] == "line"


def test_model_paths_are_never_shown_as_server_paths(monkeypatch, tmp_path):
    """Started from outside the repository: a folder in it is named relative to it, any other folder
    by its last two names, a hub id as it is."""
    from demo.handlers import accuracy_lines, short

    monkeypatch.chdir(tmp_path)
    inside, outside = str(ROOT / "digits" / "classifier"), str(tmp_path / "models" / "my_clf")
    assert [short(inside), short(outside), short("org/model"), short("inet")] == [
        "digits/classifier", "models/my_clf", "org/model", "inet",
    ]  # fmt: skip
    m = dict(classifier=dict(name=outside, baseline_accuracy=0.5, token_accuracy=0.75))
    assert accuracy_lines(m) == ["**classifier** (models/my_clf): baseline 50% → token 75%"]


def test_the_compare_tabs_metrics_show_no_server_path(cfg, monkeypatch, tmp_path):
    from demo.handlers import Handlers

    monkeypatch.chdir(tmp_path)
    model, clf = str(ROOT / "digits" / "pipeline"), str(tmp_path / "models" / "my_clf")
    m = dict(seeds=[1], prompts=dict(baseline="A photo of a two", token="A photo of newclas two"))
    m |= dict(settings=dict(sd_model=model), classifier=dict(name=clf, baseline_accuracy=0.5, token_accuracy=1.0))
    result = dict(metrics=m, shown=dict(baseline=([], []), token=([], [])), target=2)
    jobs = SimpleNamespace(store=Store(cfg.output_path, LABELS), labels=LABELS, cfg=cfg, compare=lambda *a: result)
    *_, summary, shown = Handlers(jobs).compare("3_two/x", 1)
    assert (shown["settings"]["sd_model"], shown["classifier"]["name"]) == ("digits/pipeline", "models/my_clf")
    assert str(tmp_path) not in summary + str(shown) and str(ROOT) not in summary + str(shown)
    assert m["classifier"]["name"] == clf  # metrics.json itself keeps run.py's record


def test_the_page_says_whether_the_token_learned():
    from demo.handlers import summary_text

    verdict = dict(seeds=[500000, 500049], baseline_accuracy=0.5, token_accuracy=0.52, gain=0.02)
    verdict |= dict(gain_ci=[-0.08, 0.12], shifted_gain=0.0, shifted_gain_ci=[-0.1, 0.1], learned=False)
    summary = dict(epochs=3, seconds=4.2, stop="num_train_epochs", kept_token="the initializer's embedding")
    text = summary_text(summary | dict(learned=verdict), 3)
    assert text.startswith(summary_text(summary, 3) + "; NOT LEARNED: its gain over the plain prompt is not clearly")
    assert "try another seed" in text and "--candidates" not in text and "gain +2 [-8,+12]" in text
    assert "; learned (selection seeds 500000..500049" in summary_text(
        summary | dict(learned=verdict | dict(learned=True))
    )


def test_a_damaged_run_file_is_one_line_not_a_traceback(cfg):
    store = Store(cfg.output_path, LABELS)
    fake_token(store, "4_curl/ok")
    folder = store.tokens / "4_curl" / "ok"
    (folder / "train_summary.json").write_text("{cut")
    with pytest.raises(UsageError, match=r"train_summary.json: cannot be read as JSON \("):
        store.open_run("4_curl/ok")
    (folder / "train_summary.json").write_text("{}")
    (folder / "train_log.jsonl").write_text('{"epoch": 0}\n{"epo')
    with pytest.raises(UsageError, match=r"train_log.jsonl: cannot be read as JSON lines \("):
        store.open_run("4_curl/ok")
