"""Image quality: a Frechet distance on a classifier's features against a reference folder, on tiny
inputs, in seconds (the augmentation experiment's tests are in experiments/digits/tests)."""

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


def test_fid_reference_and_generation_end_to_end(tiny, tmp_path, capsys):
    out, ref = tmp_path / "out", reference_folder(tmp_path / "ref")
    extra = ["--fid_reference", str(ref), "--eval_classifier", tiny["clf_b"], "--test_size", "3"]
    assert main(tiny_args(tiny, out, *extra, "--generate", "2")) == 0
    m = json.loads((out / "pipeline_token" / "2_tiger_cat" / "default" / "metrics.json").read_text())
    fid = m["fid"]
    assert fid["judge"] == "eval_classifier" and fid["n_reference"] == 4 and fid["n_generated"] == 3
    assert np.isfinite(fid["baseline"]) and np.isfinite(fid["token"]) and fid["baseline"] > 0
    row = next(csv.DictReader((out / "results.csv").open()))
    assert float(row["fd_baseline"]) == pytest.approx(fid["baseline"], abs=1e-3)
    assert "[FD on eval_classifier] baseline" in capsys.readouterr().out
    token = sorted((out / "generated" / "2_tiger_cat").glob("*.png"))
    assert [p.name for p in token] == ["00000.png", "00001.png"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--fid_reference", "/no/such/dir"], "--fid_reference '/no/such/dir'"),
        (["--fid_reference", "REF", "--class_index", "2,3"], "no folder 3_crane/"),
        (["--fid_reference", "REF", "--test_size", "1"], "needs --test_size >= 2"),
        (["--fid_reference", "ONE"], "needs at least 2 images (a covariance)"),
    ],
)
def test_bad_quality_flags_fail_before_training(tiny, tmp_path, capsys, extra, needle):
    folders = dict(REF=str(reference_folder(tmp_path / "ref")), ONE=str(reference_folder(tmp_path / "one", n=1)))
    assert main(tiny_args(tiny, tmp_path / "out", *[folders.get(a, a) for a in extra])) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "pipeline_token").exists()  # nothing trained
