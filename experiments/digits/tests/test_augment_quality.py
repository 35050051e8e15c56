"""The augmentation and quality experiments (the paper's other two claims in miniature): the code on tiny
inputs in seconds, and both scripts end to end on a short digits run (slow)."""

import json

import numpy as np
import pytest
import torch

from run import main
from utils import save_image


def blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten overlapping Gaussian classes in 16 dimensions (digit d around 1.5 e_d), a stand-in for pixels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n_per_class)
    return rng.normal(size=(len(y), 16)) + 1.5 * np.eye(16)[y], y


@pytest.mark.parametrize("model", ["logreg", "cnn"])
def test_augmentation_helps_with_good_images_and_not_with_mislabelled_ones(model, monkeypatch):
    from experiments.digits import augment
    from experiments.digits.augment import experiment, summarize, table

    monkeypatch.setattr(augment, "CNN_STEPS", 60)  # enough for these blobs; seconds, not a minute

    x_train, y_train = blobs(20, 0)
    x_test, y_test = blobs(50, 1)
    one, seven = (blobs(40, s)[0][blobs(40, s)[1] == d] for s, d in ((2, 1), (3, 7)))
    # "token" images show the class's digit; "baseline" images are what the shared word gives: half 1s, half 7s,
    # the same images labelled 1 for class 1 and 7 for class 7
    token, base = {1: one, 7: seven}, {1: np.concatenate([one[:20], seven[:20]])}
    base[7] = base[1]
    generated = dict(token=token, baseline=base)
    records = experiment(x_train, y_train, x_test, y_test, generated, ks=(1,), seeds=range(8), model=model)
    assert len(records) == 32 and {r["condition"] for r in records} == {"none", "baseline", "token", "real"}
    rows = {r["condition"]: r for r in summarize(records)}
    gain = rows["token - baseline"]["ambiguous_accuracy"]
    assert gain[1] > 0 and gain[1] <= gain[0] <= gain[2]  # mean with its paired interval, clearly positive
    none = rows["none"]["ambiguous_accuracy"][0]
    assert rows["token"]["ambiguous_accuracy"][0] > none and rows["real"]["ambiguous_accuracy"][0] > none
    text = table(list(rows.values()), 40)
    assert "| 1 | token - baseline |" in text and "nan" not in text


def test_augment_and_quality_read_run_folders(tmp_path):
    """The scripts' file handling, on hand-made run folders (the real run is the slow test below)."""
    from experiments.digits.augment import load_generated
    from experiments.digits.quality import other_digit, write_references

    for sub in ("generated", "generated_baseline"):
        for name, n in (("2_stick", 3), ("8_stick", 4)):
            for i in range(n):
                save_image(tmp_path / sub / name / f"{i:05d}.png", torch.rand(3, 16, 16))
    gen = load_generated(tmp_path)
    assert sorted(gen["token"]) == [1, 7] and {len(x) for x in gen["baseline"].values()} == {3}
    assert gen["token"][1].shape == (3, 256) and load_generated(tmp_path, n=2)["token"][7].shape == (2, 256)
    refs = write_references(tmp_path / "ref")
    assert refs[1].name == "2_stick" and 30 <= len(list(refs[1].glob("*.png"))) <= 40  # ~36 held-out 1s
    assert (other_digit(1), other_digit(8), other_digit(0)) == (7, 3, 6)


@pytest.mark.slow
def test_quality_and_augment_scripts_on_the_digits_world(tmp_path):
    """Both scripts end to end on a short digits run (two classes, a few epochs): they run and write tables."""
    from experiments.digits import augment, baseline_images, quality

    cmd = ["--preset", "digits", "--class_index", "2,8", "--num_train_epochs", "3", "--test_size", "20"]
    assert main([*cmd, "--generate", "10", "--output_path", str(tmp_path)]) == 0
    assert baseline_images.main(["--run", str(tmp_path)]) == {"2_stick": 10, "8_stick": 10}
    token, base = (sorted((tmp_path / d / "2_stick").glob("*.png")) for d in ("generated", "generated_baseline"))
    assert [p.name for p in token] == [p.name for p in base] and token[0].read_bytes() != base[0].read_bytes()
    rows = quality.main(["--run", str(tmp_path), "--threads", "1"])
    assert [r["class_index"] for r in rows] == [2, 8] and all(r["fd_token"] > 0 for r in rows)
    assert json.loads((tmp_path / "quality.json").read_text())["rows"][0]["n_generated"] == 20
    table = augment.main(["--run", str(tmp_path), "--seeds", "3", "--k", "2"])
    assert len(table) == 5 and (tmp_path / "augment.json").is_file()  # none, baseline, token, real, difference
