"""The web demo (demo/app.py) through its API, as a gradio_client user scripts it: the real server in
a subprocess on the shipped digits world, a free port, its own output folder. Its parts without a
server: tests/test_app_units.py."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

from config import PRESETS
from demo import app
from demo.inputs import Limits
from report import SUMMARY_FIELDS
from utils import UsageError

LIMITS = ["--max_epochs", "5", "--max_seeds", "8", "--max_images", "3", "--max_queue", "3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(
    out: Path | None, *args: str, root: Path = ROOT, timeout: float = 240, env: dict | None = None
) -> tuple[subprocess.Popen, str, float]:
    """`python demo/app.py` as a user starts it (from `root`; without `out`, its default output folder;
    `env` added to the environment); returns the process, its URL and the seconds until the page answered."""
    port = free_port()
    cmd = [
        sys.executable,
        str(root / "demo" / "app.py"),
        "--port",
        str(port),
        *(["--output_path", str(out)] if out else []),
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    log = open((out or root).parent / f"app_{port}.log", "w")
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while time.time() - start < timeout:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc, url, time.time() - start
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise AssertionError(f"the page did not answer within {timeout} s: {Path(log.name).read_text()[-3000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    out.mkdir()
    proc, url, seconds = start_app(out, *LIMITS)
    print(f"page answered {seconds:.1f} s after start")
    yield dict(url=url, out=out, proc=proc)
    stop_app(proc)


@pytest.fixture
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def api_error(client, *args, api_name: str) -> str:
    """The message a bad request gets (gradio_client raises it as AppError)."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(*args, api_name=api_name)
    return str(e.value)


# ---------------------------------------------------------------- settings, no server
def test_app_defaults_to_the_digits_world_on_localhost(monkeypatch, tmp_path):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    monkeypatch.chdir(tmp_path)  # the default output folder is relative to where the server starts
    args, cfg = app.parse_app_args([])
    assert not (tmp_path / "out").exists()  # parsing checks the folder, the server's store creates it
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    assert cfg.preset == "digits" and cfg.sd_model.endswith("digits/pipeline") and cfg.output_path == app.DEFAULT_OUTPUT
    # The page's epochs; the rest the preset's.
    assert cfg.num_train_epochs == app.DIGITS_EPOCHS == 30 and cfg.lr == 0.06
    assert (cfg.candidates, cfg.retry_below) == (1, None)  # one token per request, although the preset retries
    assert app.parse_app_args(["--num_train_epochs", "50"])[1].num_train_epochs == 50
    limits = (Limits.max_epochs, Limits.max_seeds, Limits.max_images)
    assert (args.max_epochs, args.max_seeds, args.max_images) == limits
    # A model flag means the user chose the models: no preset is slipped in; run.py's flags parse as in run.py.
    args, cfg = app.parse_app_args(["--sd_model", "org/model", "--lr", "0.5", "--host", "0.0.0.0", "--max_seeds", "4"])
    assert (cfg.preset, cfg.sd_model, cfg.classifier, cfg.lr, cfg.num_train_epochs) == (
        "",
        "org/model",
        "inet",
        0.5,
        50,
    )
    assert (args.host, args.max_seeds) == ("0.0.0.0", 4)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # what a Hugging Face Space sets
    assert app.parse_app_args([])[0].host == "0.0.0.0"


def test_the_page_reads_the_presets_epochs():
    """The page's note names the preset's epochs from config.PRESETS, never a number of its own."""
    from demo.page import intro, preset_epochs

    cfg = app.parse_app_args([])[1]
    assert preset_epochs(cfg) == PRESETS["digits"]["num_train_epochs"]
    text = " ".join(intro(cfg, Limits.max_epochs).split())
    assert f"proposes {cfg.num_train_epochs} epochs (the preset's run has {preset_epochs(cfg)})" in text


@pytest.mark.parametrize(
    "argv, message",
    [(["--max_epochs", "0"], "--max_epochs 0"), (["--lr", "0"], "--lr 0.0"), (["--preset", "x"], "--preset 'x'")],
)
def test_bad_server_flags_are_one_line(argv, message):
    with pytest.raises(UsageError, match=message):
        app.parse_app_args(argv)


def test_bad_server_flag_exits_2_without_traceback():
    r = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "app.py"), "--max_seeds", "-1"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip() == "app.py: error: --max_seeds -1: must be a positive integer"


def taken_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "70000"], "--port 70000: must be a port number in 1..65535"),
        (["--port", "-1"], "--port -1: must be a port number in 1..65535"),
        (["--port", "{taken}"], "--port {taken}: already in use on 127.0.0.1; pick another"),
        (["--class_index", "99"], "--class_index: the demo picks the class on the page; not a server flag"),
    ],
)
def test_a_refused_start_is_one_line_and_creates_nothing(tmp_path, argv, message):
    """Refused before the run flags are parsed (config.parse_args creates the output folder)."""
    with taken_port() as s:
        port = str(s.getsockname()[1])
        argv = [a.replace("{taken}", port) for a in argv]
        cmd = [sys.executable, str(ROOT / "demo" / "app.py"), *argv]
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)  # not a server
    assert (r.returncode, r.stderr.strip()) == (2, "app.py: error: " + message.replace("{taken}", port))
    assert list(tmp_path.iterdir()) == []  # no out/demo


@pytest.mark.parametrize(
    "flag, why",
    [
        ("--class_index 99", "the demo picks the class on the page"),
        ("--class_name stick", "the demo picks the class on the page"),
        ("--train", "the page's buttons choose what runs"),
        ("--evaluate false", "the page's buttons choose what runs"),
        ("--generate 4", "the Use tab generates images"),
        ("--exp_id mine", "every training names a run folder of its own"),
        ("--skip_exists", "every training names a run folder of its own"),
        ("--candidates 2", "the page trains one token per request"),
        ("--retry_below 10", "the page trains one token per request"),
        ("--class_batch 2", "the page trains one class per request"),
        ("--save_as_full_pipeline", "the page saves tokens only"),
    ],
)
def test_run_flags_the_demo_does_not_use_are_refused(monkeypatch, tmp_path, flag, why):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as e:
        app.parse_app_args(flag.split())
    assert str(e.value) == f"{flag.split()[0]}: {why}; not a server flag"
    assert list(tmp_path.iterdir()) == []


def test_help_does_not_offer_the_refused_flags(capsys):
    with pytest.raises(SystemExit):
        app.parse_app_args(["--help"])
    listing, refused = capsys.readouterr().out.rsplit("\n", 2)[0], app.NOT_SERVER_FLAGS
    assert "--sd_model" in listing and not any(f"--{flag} " in listing for flag in refused)


def test_a_bad_port_variable_is_one_line(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "abc")
    with pytest.raises(UsageError) as e:
        app.parse_app_args([])
    assert str(e.value) == "argument --port: invalid int value: 'abc'"


def test_run_py_and_the_jobs_do_not_import_gradio():
    """gradio is the demo's extra: the CLI and the demo's jobs, folder and checks work without it."""
    code = "import sys; sys.modules['gradio'] = None; import run, demo.app, demo.jobs, demo.store, demo.inputs\n"
    code += "run.main(['--help'])"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "--sd_model" in r.stdout, r.stderr[-2000:]


# ---------------------------------------------------------------- the API
def test_endpoints_are_named_after_what_they_do(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/train", "/stop", "/compare", "/generate", "/results", "/open_run", "/download", "/classes"} <= names
    classes = client.predict(api_name="/classes")
    assert classes[:3] == ["1: loop", "2: stick", "3: two"] and len(classes) == 10


def run_files(out: Path, run: str) -> tuple[Path, Path]:
    return out / "pipeline_token" / run, out / "img" / run


@pytest.mark.slow
def test_train_compare_generate_and_the_token_is_a_normal_token(client, server):
    classes = client.predict(api_name="/classes")
    job = client.submit("2: stick", 3, 0.06, 35, 15, api_name="/train")
    outputs = job.result() and job.outputs()
    status, images, loss, accuracy, log, trained = outputs[-1]
    assert re.fullmatch(r"2_stick/e3_lr0\.06_s35_g15_[0-9a-f]{6}", trained)  # a run folder of its own
    assert [row[0] for row in log["data"]] == [1, 2, 3]  # epoch (from 1), loss, accuracy, grad norm
    assert [p[0] for p in loss["data"]] == [1, 2, 3] and [p[1] for p in accuracy["data"]] == [r[2] for r in log["data"]]
    assert sum(o[0].startswith("epoch ") for o in outputs) == 3, [o[0] for o in outputs]  # live, once per epoch
    assert [o[0].split(":")[0] for o in outputs[:3]] == ["epoch 1 of 3", "epoch 2 of 3", "epoch 3 of 3"]
    assert [len(o[2]["data"]) for o in outputs[:3]] == [1, 2, 3]  # the curve grows epoch by epoch
    # The last epoch's 16 images, each captioned with the classifier's prediction (✓: the chosen class).
    assert len(images) == 16 and all(im["caption"] in ["✓ 2: stick"] + [f"✗ {c}" for c in classes] for im in images)
    assert status.startswith("done: 3 of 3 epochs") and "epoch 0" not in status

    # run.py's layout: a token, its config, log and summary, the training PNGs.
    out = server["out"]
    token_dir, img_dir = run_files(out, trained)
    token = token_dir / "learned_embeds.safetensors"
    assert json.loads((token_dir / "train_summary.json").read_text())["epochs"] == 3
    assert len((token_dir / "train_log.jsonl").read_text().splitlines()) == 3
    assert json.loads((token_dir / "config.json").read_text())["num_train_epochs"] == 3
    assert len(list((img_dir / "train").glob("e002_*.png"))) == 16

    base, tok, summary, metrics = client.predict(trained, 6, api_name="/compare")
    first = PRESETS["digits"]["eval_seed"]  # the preset's evaluation seeds (the test range)
    assert metrics["seeds"] == list(range(first, first + 6)) and metrics["class_index"] == 2
    assert metrics["settings"]["sd_model"] == "digits/pipeline" and str(ROOT) not in json.dumps(metrics)
    for role in ("classifier", "eval_classifier"):
        assert 0 <= metrics[role]["baseline_accuracy"] <= 1 and 0 <= metrics[role]["token_accuracy"] <= 1
    assert len(base) == len(tok) == 6
    for shown, kind in ((base, "baseline"), (tok, "token")):  # side by side, captioned with the predictions
        preds = metrics["classifier"][f"{kind}_predictions"]
        assert [im["caption"] for im in shown] == [("✓ " if p == 1 else "✗ ") + classes[p] for p in preds]
    assert f"token {metrics['classifier']['token_accuracy']:.0%}" in summary
    assert "“A photo of S_c stick”" in summary and "newclas" not in summary
    assert (img_dir / "grid.png").is_file()

    # The token loads into a plain diffusers pipeline, as any textual-inversion file.
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_pretrained(str(ROOT / "digits" / "pipeline"), safety_checker=None)
    pipe.load_textual_inversion(str(token), token="<stick-1>")
    row = pipe.tokenizer.convert_tokens_to_ids("<stick-1>")
    saved = next(iter(load_file(str(token)).values())).reshape(-1)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[row].detach(), saved)

    images, download = client.predict(trained, "a drawing of S_c stick", 5, 2, api_name="/generate")
    assert len(images) == 2 and Path(download).name == "learned_embeds.safetensors"
    assert Path(download).read_bytes() == token.read_bytes()

    # A second training of the same class: a second run folder; the first keeps its token and metrics.
    second = client.submit("2: stick", 1, 0.06, 35, 15, api_name="/train").result()[-1]
    assert second != trained and second.startswith("2_stick/e1_lr0.06_s35_g15_")
    assert token.read_bytes() == Path(download).read_bytes() and (token_dir / "metrics.json").is_file()
    results = client.predict(api_name="/results")
    assert set(results["tokens"]) >= {trained, second}
    assert [trained.split("/")[1], "6"] in [[r[2], r[3]] for r in results["rows"]]  # results.csv: a row per run
    assert results["headers"] == [f for f in SUMMARY_FIELDS if f != "token_path"]  # results.csv, paths as run names
    grid, loss, accuracy, log, text, files = client.predict(trained, api_name="/open_run")
    assert Path(grid).name == "grid.png" and len(log["data"]) == 3 and len(loss["data"]) == 3 and "baseline" in text
    assert {Path(f).name for f in files} >= {"learned_embeds.safetensors", "train_log.jsonl", "metrics.json"}


@pytest.mark.parametrize("epochs", ["abc", "NaN", "Inf", "-inf", "1e999", "", 2.5, 0, 6])
def test_numbers_as_text_get_the_out_of_range_message(client, epochs):
    message = api_error(client, "2: stick", epochs, 0.06, 35, 15, api_name="/train")
    assert message == f"epochs {epochs!r}: must be a whole number in 1..5 (the server's --max_epochs)"


def test_bad_input_is_a_message_and_the_next_call_works(client):
    bad = [
        (("no such class", 2, 0.06, 35, 15), "/train", "class 'no such class': not a class of the classifier"),
        (("11", 2, 0.06, 35, 15), "/train", "class '11': 11 is out of range; allowed 1..10"),
        (("stick", 2, 0.06, 35, 15), "/train", "class 'stick' is ambiguous: use class 2 or 8"),
        (("2: stick", 2, -1, 35, 15), "/train", "lr -1: must be a number above 0 and at most 10"),
        (("2: stick", 2, "abc", 35, 15), "/train", "lr 'abc': must be a number above 0 and at most 10"),
        (("2: stick", 2, 0.06, "x", 15), "/train", "seed 'x': must be a whole number in 0..4294967295"),
        (("2: stick", 2, 0.06, 35, 16), "/train", "grad_steps 16: must be a whole number in 1..15"),
        (("2_stick/x", 9), "/compare", "seeds 9: must be a whole number in 1..8 (the server's --max_seeds)"),
        (("2_stick/x", "nan"), "/compare", "seeds 'nan': must be a whole number in 1..8"),
        (("4_curl/default", 2), "/compare", "no trained token there"),
        (("2_stick/x", "a photo", 0, 4), "/generate", "images 4: must be a whole number in 1..3"),
        (("2_stick/x", "x" * 301, 0, 1), "/generate", "prompt: must be 1..300 characters"),
    ]
    for args, endpoint, message in bad:
        assert message in api_error(client, *args, api_name=endpoint), (endpoint, args)
    assert client.predict(api_name="/classes")[1] == "2: stick"  # the server goes on working


TRAIN_INPUTS = "class_choice, epochs, lr, seed, grad_steps"  # the handler's parameters, as the API lists them


def raw_error(url: str, endpoint: str, data: list) -> str:
    """What a plain HTTP client (no gradio_client to fill in defaults) gets for `data`: the error's message."""
    call = url + "gradio_api/call" + endpoint
    body = json.dumps({"data": data}).encode()
    request = urllib.request.Request(call, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as r:
        event = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{call}/{event}") as r:
        stream = r.read().decode()
    assert stream.startswith("event: error"), stream
    return json.loads(stream.split("data:", 1)[1])["error"]


@pytest.mark.parametrize(
    "endpoint, data, message",
    [
        ("/train", ["2: stick"], "missing inputs: epochs, lr, seed, grad_steps (/train takes " + TRAIN_INPUTS + ")"),
        ("/compare", [], "missing inputs: run, seeds (/compare takes run, seeds)"),
        ("/generate", ["x"], "missing inputs: prompt, seed, images (/generate takes run, prompt, seed, images)"),
        ("/open_run", [], "missing inputs: run (/open_run takes run)"),
        ("/download", [], "missing inputs: path (/download takes path)"),
        ("/train", [["2: stick"], 1, 0.06, 35, 15], "class_choice ['2: stick']: must be text or a number"),
        ("/train", ["2: stick", True, 0.06, 35, 15], "epochs True: must be text or a number"),
        ("/generate", ["2_stick/x", {"text": "a"}, 0, 1], "prompt {'text': 'a'}: must be text or a number"),
        ("/download", [{"path": "/etc/passwd"}], "path {'path': '/etc/passwd'}: must be text or a number"),
    ],
)
def test_missing_or_malformed_inputs_get_a_message_naming_them(server, endpoint, data, message):
    assert raw_error(server["url"], endpoint, data) == message


def test_malformed_inputs_through_gradio_client(client):
    assert api_error(client, [2], 1, 0.06, 35, 15, api_name="/train") == "class_choice [2]: must be text or a number"


def test_long_download_names_show_no_server_path(client, server):
    for name in ["a" * 300, "a/" * 200, "b" * 4000]:
        message = api_error(client, name, api_name="/download")
        assert message.endswith(": no such file in the output folder") and len(message) < 120, message
        assert str(server["out"]) not in message and str(ROOT) not in message and "/tmp" not in message


def test_training_into_a_link_out_of_the_output_folder_is_refused(client, server, tmp_path):
    """A class folder replaced by a symbolic link that leads out: refused before anything is written."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (server["out"] / "pipeline_token").mkdir(exist_ok=True)
    (server["out"] / "pipeline_token" / "10_nine").symlink_to(outside)
    message = api_error(client, "10: nine", 1, 0.06, 35, 15, api_name="/train")
    assert re.fullmatch(
        r"pipeline_token/10_nine/e1_\S+: leads out of the output folder \(a symbolic link\?\); refused", message
    )
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "pipeline_token/../../../etc", "link/passwd"])
def test_paths_outside_the_output_folder_are_refused(client, server, path):
    link = server["out"] / "link"
    if not link.exists():
        link.symlink_to("/etc")  # a link inside the folder that leads out of it
    for endpoint, args in [("/download", (path,)), ("/open_run", (path,)), ("/compare", (path, 2))]:
        message = api_error(client, *args, api_name=endpoint)
        assert "output folder" in message or "not a token folder" in message, (endpoint, message)
        assert "root:" not in message


def test_gradio_serves_only_the_output_folder(server):
    """allowed_paths is the output folder: Gradio's file route refuses everything else."""
    (server["out"] / "note.txt").write_text("inside")
    base = server["url"] + "gradio_api/file="
    with urllib.request.urlopen(base + str(server["out"] / "note.txt")) as r:
        assert r.read() == b"inside"
    for outside in ["/etc/passwd", str(ROOT / "demo" / "app.py"), str(server["out"]) + "/../../../etc/passwd"]:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + outside)
        assert e.value.code in (403, 404), outside


def test_the_servers_temporary_files_stay_in_its_output_folder(tmp_path):
    """Gradio's cache of the files it serves lives in the output folder, not the system's temporary
    folder (TMPDIR, empty here), and goes when the server stops."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    token = out / "pipeline_token" / "3_two" / "x" / "learned_embeds.safetensors"
    token.parent.mkdir(parents=True)
    token.write_bytes(b"token")
    (out / "img" / "3_two" / "x").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 16)).save(out / "img" / "3_two" / "x" / "grid.png")
    proc, url, _ = start_app(out, env={"TMPDIR": str(tmp)})
    try:
        from gradio_client import Client

        grid, *_ = Client(url, verbose=False).predict("3_two/x", api_name="/open_run")
        assert Path(grid).read_bytes() == (out / "img" / "3_two" / "x" / "grid.png").read_bytes()
        assert list(tmp.iterdir()) == []
        (cache,) = out.glob(".tmp-*")
        assert sorted(f.name for f in cache.rglob("*.*")) == ["grid.png", "learned_embeds.safetensors"]
    finally:
        stop_app(proc)
    assert not cache.exists() and list(tmp.iterdir()) == [] and token.is_file()


@pytest.mark.slow
def test_stop_keeps_the_best_token_so_far(client, server):
    job = client.submit("1: loop", 5, 0.06, 35, 15, api_name="/train")
    while not job.outputs():  # the first epoch's update
        time.sleep(0.2)
    client.predict(api_name="/stop")  # the same client: its own training
    status, *_, log, trained = job.result()
    summary = json.loads((run_files(server["out"], trained)[0] / "train_summary.json").read_text())
    assert summary["stop"] == "stopped by the user" and summary["epochs"] < 5 and "stopped by the user" in status
    assert trained.startswith("1_loop/e5_") and len(log["data"]) == summary["epochs"]


@pytest.mark.slow
def test_one_job_at_a_time_others_wait_in_a_bounded_queue(server):
    """--max_queue 3: a training runs, the next requests wait and see their place, one more is
    turned away with a message; the waiting ones run afterwards, one at a time, each in its own folder."""
    from gradio_client import Client
    from gradio_client.utils import Status

    clients = [Client(server["url"], verbose=False) for _ in range(5)]
    # "curl" (3 or 8) trains all its epochs (an unambiguous class would stop at once, at 100% accuracy).
    first = clients[0].submit("9: curl", 5, 0.06, 35, 15, api_name="/train")
    while not first.outputs():
        time.sleep(0.2)
    waiting = [c.submit("9: curl", 1, 0.06, seed, 15, api_name="/train") for seed, c in enumerate(clients[1:4])]
    deadline = time.time() + 10
    while time.time() < deadline and any(w.status().code != Status.IN_QUEUE for w in waiting):
        time.sleep(0.1)
    ranks = [w.status() for w in waiting]
    assert not first.done() and all(s.code == Status.IN_QUEUE for s in ranks), ranks
    assert sorted(s.rank for s in ranks) == [0, 1, 2]  # what the page shows as "queue: 1/3" etc.
    turned_away = clients[4].submit("9: curl", 1, 0.06, 35, 15, api_name="/train")
    with pytest.raises(Exception, match="[Qq]ueue is full"):
        turned_away.result()
    runs = [first.result()[-1], *(w.result()[-1] for w in waiting)]
    assert all(r.startswith("9_curl/") for r in runs) and len(set(runs)) == 4


def space_files() -> list[tuple[str, str]]:
    """docs/space.md's file set: (pattern in this repository, name in the Space)."""
    doc = (ROOT / "docs" / "space.md").read_text()
    block = doc.split("<!-- space-files -->")[1].split("<!-- /space-files -->")[0]
    return re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", block, flags=re.M)


def copy_space(dest: Path) -> None:
    """Exactly the documented files: a pattern copies what it matches, a folder/ the whole folder."""
    for pattern, name in space_files():
        if pattern.endswith("/"):
            shutil.copytree(ROOT / pattern, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif any(ch in pattern for ch in "*?["):
            assert name == pattern, "a pattern keeps its names"
            for f in ROOT.glob(pattern):
                shutil.copy(f, dest / f.relative_to(ROOT))
        else:
            shutil.copy(ROOT / pattern, dest / name)


def test_a_space_built_from_the_documented_files_starts_and_answers(tmp_path):
    """docs/space.md's file set, copied alone into a folder, is an app that starts and answers; its
    README's front matter runs app.py with gradio at the version CI pins."""
    space = tmp_path / "space"
    space.mkdir()
    copy_space(space)
    readme = (space / "README.md").read_text()
    front = dict(re.findall(r"^(\w+): *\"?([^\"\n]*)\"?$", readme.split("---")[1], flags=re.M))
    pinned = re.search(r"^gradio==(\S+)$", (ROOT / ".ci" / "constraints.txt").read_text(), flags=re.M)[1]
    assert (front["sdk"], front["app_file"], front["sdk_version"], front["python_version"]) == (
        "gradio", "demo/app.py", pinned, "3.11",
    )  # fmt: skip
    assert (space / "requirements.txt").is_file()
    proc, url, _ = start_app(None, root=space)  # as the Space starts it: no flags
    try:
        from gradio_client import Client

        assert Client(url, verbose=False).predict(api_name="/classes")[1] == "2: stick"
    finally:
        stop_app(proc)
    assert (space / "out" / "demo").is_dir()  # its own output folder, inside the Space


def test_unexpected_failures_are_one_line_in_the_page(capsys, tmp_path):
    import gradio as gr

    from demo.handlers import page_errors

    # An unexpected failure whose own message holds a server path: the page names only its type.
    @page_errors
    def broken():
        raise OSError(36, "File name too long", str(tmp_path / ("a" * 300)))

    @page_errors
    def streaming():
        yield 1
        raise UsageError("epochs 0: must be a whole number in 1..5")

    with pytest.raises(gr.Error) as e:
        broken()
    assert e.value.message == "internal error (OSError); the server log has the details"
    assert "Traceback" in capsys.readouterr().err  # the details go to the server's log, not the page
    with pytest.raises(gr.Error) as e:
        list(streaming())
    assert e.value.message == "epochs 0: must be a whole number in 1..5"


@pytest.mark.slow
def test_a_closed_request_stops_its_training(tmp_path):
    """The page closed mid-training (Gradio closes the request's generator): the training thread
    stops after its epoch, keeps the best token, and frees the models for the next job."""
    import threading

    from config import parse_args
    from demo.jobs import Jobs

    jobs = Jobs(parse_args(["--preset", "digits", "--output_path", str(tmp_path)]), Limits())
    events = jobs.train("1: loop", 5, 0.06, 35, 15, threading.Event())
    assert next(events)["entry"]["epoch"] == 0
    events.close()
    assert jobs.lock.acquire(timeout=120)
    (run,) = (tmp_path / "pipeline_token" / "1_loop").iterdir()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stop"] == "stopped by the user" and summary["epochs"] <= 2
    assert (run / "learned_embeds.safetensors").is_file()
