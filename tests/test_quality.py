"""The paper's other two claims in miniature: a Frechet distance on a classifier's features (quality) and
training data made by the token (augmentation); the code on tiny inputs, in seconds."""

import csv
import json
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_args

from run import main
from stats import frechet_distance, frechet_gaussians
from utils import save_image

sys.path.insert(0, str(ROOT))


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    # |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 for diagonal covariances a, b
    mu1, mu2, a, b = np.zeros(3), np.array([1.0, 0.0, 2.0]), np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    assert frechet_gaussians(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(5 + 1 + 1 + 4)
    # full covariances with a common rotation: the same value (the distance does not depend on the basis)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated = frechet_gaussians(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(11.0, abs=1e-8)


def test_frechet_distance_from_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3)) * np.sqrt([1.0, 4.0, 9.0])
    y = rng.normal(size=(20000, 3)) * np.sqrt([4.0, 1.0, 1.0]) + [1.0, 0.0, 2.0]
    assert frechet_distance(x, y) == pytest.approx(11.0, rel=0.03)
    assert frechet_distance(x[:50], x[:50]) == pytest.approx(0.0, abs=1e-6)
    # fewer samples than dimensions (singular covariances): finite, not negative
    few = frechet_distance(rng.normal(size=(5, 64)), rng.normal(1.0, 2.0, size=(7, 64)))
    assert np.isfinite(few) and few > 64  # the means alone are 64 apart
    with pytest.raises(ValueError):
        frechet_distance(x[:1], y)


@pytest.mark.parametrize("spec", ["vit", "timm/resnet18"])
def test_head_features_are_the_input_of_the_final_layer(tiny, spec):
    from classifiers import load_classifier
    from evaluate import head_features, head_of

    clf = load_classifier(tiny["clf"]) if spec == "vit" else load_classifier(spec, pretrained=False)
    images = torch.rand(3, 3, 16, 16) if spec == "vit" else torch.rand(3, 3, 64, 64)
    feats = head_features(clf, images, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        logits = clf(images)
        again = head_of(clf)(torch.from_numpy(feats))
    assert feats.ndim == 2 and len(feats) == 3 and torch.allclose(again, logits, atol=1e-4)


def reference_folder(root, n: int = 4):
    for i in range(n):
        save_image(root / "2_tiger_cat" / f"{i}.png", torch.rand(3, 16, 16))
    return root


def test_fid_reference_and_baseline_generation_end_to_end(tiny, tmp_path, capsys):
    out, ref = tmp_path / "out", reference_folder(tmp_path / "ref")
    extra = ["--fid_reference", str(ref), "--eval_classifier", tiny["clf_b"], "--test_size", "3"]
    assert main(tiny_args(tiny, out, *extra, "--generate", "2", "--generate_baseline", "True")) == 0
    m = json.loads((out / "pipeline_token" / "2_tiger_cat" / "default" / "metrics.json").read_text())
    fid = m["fid"]
    assert fid["judge"] == "eval_classifier" and fid["n_reference"] == 4 and fid["n_generated"] == 3
    assert np.isfinite(fid["baseline"]) and np.isfinite(fid["token"]) and fid["baseline"] > 0
    row = next(csv.DictReader((out / "results.csv").open()))
    assert float(row["fd_baseline"]) == pytest.approx(fid["baseline"], abs=1e-3)
    assert "[FD on eval_classifier] baseline" in capsys.readouterr().out
    token = sorted((out / "generated" / "2_tiger_cat").glob("*.png"))
    base = sorted((out / "generated_baseline" / "2_tiger_cat").glob("*.png"))
    assert [p.name for p in token] == [p.name for p in base] == ["00000.png", "00001.png"]
    assert token[0].read_bytes() != base[0].read_bytes()  # another prompt, the same seed


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--fid_reference", "/no/such/dir"], "--fid_reference '/no/such/dir'"),
        (["--fid_reference", "REF", "--class_index", "2,3"], "no folder 3_crane/"),
        (["--fid_reference", "REF", "--test_size", "1"], "needs --test_size >= 2"),
        (["--fid_reference", "ONE"], "needs at least 2 images (a covariance)"),
        (["--generate_baseline", "True"], "needs --generate N"),
    ],
)
def test_bad_quality_flags_fail_before_training(tiny, tmp_path, capsys, extra, needle):
    folders = dict(REF=str(reference_folder(tmp_path / "ref")), ONE=str(reference_folder(tmp_path / "one", n=1)))
    assert main(tiny_args(tiny, tmp_path / "out", *[folders.get(a, a) for a in extra])) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "pipeline_token").exists()  # nothing trained


def blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten overlapping Gaussian classes in 16 dimensions (digit d around 1.5 e_d), a stand-in for pixels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n_per_class)
    return rng.normal(size=(len(y), 16)) + 1.5 * np.eye(16)[y], y


@pytest.mark.parametrize("model", ["logreg", "cnn"])
def test_augmentation_helps_with_good_images_and_not_with_mislabelled_ones(model, monkeypatch):
    from digits import augment
    from digits.augment import experiment, summarize, table

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
    from digits.augment import load_generated
    from digits.quality import other_digit, write_references

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
    from digits import augment, quality

    cmd = ["--preset", "digits", "--class_index", "2,8", "--num_train_epochs", "3", "--test_size", "20"]
    assert main([*cmd, "--generate", "10", "--generate_baseline", "True", "--output_path", str(tmp_path)]) == 0
    rows = quality.main(["--run", str(tmp_path), "--threads", "1"])
    assert [r["class_index"] for r in rows] == [2, 8] and all(r["fd_token"] > 0 for r in rows)
    assert json.loads((tmp_path / "quality.json").read_text())["rows"][0]["n_generated"] == 20
    table = augment.main(["--run", str(tmp_path), "--seeds", "3", "--k", "2"])
    assert len(table) == 5 and (tmp_path / "augment.json").is_file()  # none, baseline, token, real, difference
