"""End to end through the command line on tiny models: every output, and clear errors."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_args

from run import main


def test_end_to_end_writes_every_output(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = tiny_args(tiny, out, "--class_index", "2", "--eval_classifier", tiny["clf_b"], "--save_as_full_pipeline")
    assert main([*args, "--train", "True", "--evaluate", "True"]) == 0
    tok = out / "pipeline_token" / "2_tiger_cat" / "default"
    img = out / "img" / "2_tiger_cat" / "default"
    assert (tok / "learned_embeds.safetensors").is_file()
    cfg = json.loads((tok / "config.json").read_text())
    assert cfg["classes"] == [1] and cfg["class_index"] == "2" and cfg["lr"] == pytest.approx(0.0005)
    log = [json.loads(line) for line in (tok / "train_log.jsonl").read_text().splitlines()]
    assert 1 <= len(log) <= 2 and {"epoch", "loss", "accuracy", "predictions", "grad_norm"} <= set(log[0])
    m = json.loads((tok / "metrics.json").read_text())
    assert m["class_index"] == 2 and m["class_name"] == "tiger cat" and m["seeds"] == [0, 1]
    assert m["prompts"] == {"token": "A photo of newclas tiger cat", "baseline": "A photo of a tiger cat"}
    assert m["settings"]["steps"] == 3 and m["settings"]["guidance_scale"] == 7.5
    for role in ("classifier", "eval_classifier"):
        assert {"baseline_accuracy", "token_accuracy"} <= set(m[role]) and len(m[role]["token_predictions"]) == 2
    for kind in ("baseline", "token"):  # how often the two judges name the same class
        same = [
            a == b for a, b in zip(m["classifier"][f"{kind}_predictions"], m["eval_classifier"][f"{kind}_predictions"])
        ]
        assert m["agreement"][kind] == sum(same) / 2
    assert len(list((img / "train").glob("e000_*.png"))) == 2
    assert len(list((img / "eval" / "token").glob("seed*.png"))) == 2
    assert len(list((img / "eval" / "baseline").glob("seed0000[01]_*.png"))) == 2
    assert (img / "grid.png").is_file() and (tok / "pipeline" / "model_index.json").is_file()
    from PIL import Image

    assert Image.open(tok / "train_curve.png").size == (640, 320)  # the training curve beside the log
    assert Image.open(img / "grid.png").width >= 2 * 128  # tiles wide enough for a readable caption each
    for kind in ("baseline", "token"):  # metrics.json names exactly the images evaluation wrote
        named = {img / f for f in m["images"][kind]}
        assert named == set((img / "eval" / kind).glob("*.png")) and len(named) == 2
    assert "2,tiger cat,default," in (out / "results.csv").read_text()
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"
    for f in (img / "grid.png", tok / "learned_embeds.safetensors", tok / "metrics.json"):
        assert f.stat().st_mode & 0o044 == 0o044, f  # readable by others, not mkstemp's or safetensors' 0600
    assert "baseline" in capsys.readouterr().out


def test_evaluate_only_reuses_the_saved_token(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--class_index", "3", "--evaluate", "False")) == 0
    assert main(tiny_args(tiny, out, "--class_index", "3", "--train", "False")) == 0
    assert (out / "pipeline_token" / "3_crane" / "default" / "metrics.json").is_file()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--class_index", "0"], "--class_index '0'"),
        (["--class_index", "-3"], "--class_index '-3'"),
        (["--class_index", "abc"], "--class_index 'abc'"),
        (["--class_index", "6"], "6 is out of range; allowed 1..5"),
        (["--class_name", "crane"], "ambiguous: use --class_index 3 or 4"),
        (["--train", "maybe"], "--train"),
        (["--classifier", "/no/such/folder"], "--classifier '/no/such/folder'"),
        (["--sd_model", "./missing"], "--sd_model './missing'"),
        (["--sd_model", "nobody/no-such-model", "--class_index", "2"], "Stable Diffusion model nobody/no-such-model"),
        (["--lr", "0"], "--lr 0.0"),
        (["--epoch_size", "0"], "--epoch_size 0"),
        (["--num_of_SD_inference_steps", "-1"], "--num_of_SD_inference_steps -1"),
        (["--test_size", "0"], "--test_size 0"),
        (["--height", "20"], "--height 20: must be a positive multiple of 8"),
        (["--preset", "nope"], "--preset 'nope'"),
        (["--exp_id", ".."], "--exp_id '..': must be a folder name"),  # would empty pipeline_token/ itself
        (["--exp_id", "a/b"], "--exp_id 'a/b': must be a folder name"),
        (["--class_index", "4", "--train", "False"], "has no trained token"),
        (["--placeholder_token", "a"], "--placeholder_token 'a': already in the vocabulary"),
        (["--initializer_token", "tiger cat"], "--initializer_token 'tiger cat': must be one token"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, capsys, extra, needle):
    assert main(tiny_args(tiny, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_unwritable_output_path(tiny, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(tiny_args(tiny, tmp_path / "file" / "out")) == 2
    assert "--output_path" in capsys.readouterr().err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--class_index", "0"], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "run.py: error: --class_index '0': indices are 1-based (>= 1) and ranges go upward"


def _scalars(path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, i, out = path.read_bytes(), 0, {}
    while i < len(data):
        n = struct.unpack("<Q", data[i : i + 8])[0]
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
        i += 12 + n + 4
    return out


def test_report_to_tensorboard_logs_every_epoch(tiny, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(tiny, out, "--report_to", "tensorboard", "--evaluate", "False", "--accuracy_stop", "1")
    assert main(args) == 0
    log = [
        json.loads(line)
        for line in (out / "pipeline_token/2_tiger_cat/default/train_log.jsonl").read_text().splitlines()
    ]
    scalars = {}
    for f in (out / "logs").rglob("events.out.tfevents.*"):
        scalars |= _scalars(f)
    assert [s for s, _ in scalars["2_tiger_cat/loss"]] == [0, 1]
    assert [v for _, v in scalars["2_tiger_cat/loss"]] == pytest.approx([e["loss"] for e in log], rel=1e-5)
