"""The command line is generated from RunConfig: 1-based indices, booleans, derived values."""

import dataclasses

import pytest

from config import PRESETS, RunConfig, parse_args
from utils import UsageError


def test_defaults_are_the_papers():
    cfg = parse_args([])
    assert cfg.classes == [282]  # CLI 283 = ImageNet index 282, "tiger cat"
    assert (cfg.epoch_size, cfg.num_train_epochs, cfg.early_stopping, cfg.number_of_prompts) == (5, 50, 15, 3)
    assert cfg.lr == pytest.approx(0.00025 * 5)
    assert (cfg.seed, cfg.guidance_scale, cfg.num_of_SD_inference_steps, cfg.grad_steps) == (35, 7.0, 30, 1)
    assert (cfg.eval_steps, cfg.eval_guidance_scale, cfg.test_size, cfg.eval_seed) == (50, 7.5, 10, 0)
    assert cfg.betas == (0.9, 0.999) and cfg.weight_decay == 1e-2 and cfg.eps == 1e-8 and cfg.max_grad_norm == 1.0
    assert cfg.sd_model == "CompVis/stable-diffusion-v1-4" and cfg.classifier == "inet"


@pytest.mark.parametrize(
    "argv, expected",
    [(["--train", "True"], True), (["--train"], True), (["--train", "False"], False), (["--train", "no"], False)],
)
def test_booleans_parse(argv, expected):
    assert parse_args([*argv, "--evaluate", "True"]).train is expected


def test_one_based_index_converted_once():
    assert parse_args(["--class_index", "1"]).classes == [0]
    assert parse_args(["--class_index", "283,285,290-292"]).classes == [282, 284, 289, 290, 291]


def test_lr_follows_the_actual_epoch_size_and_explicit_lr_wins():
    assert parse_args(["--epoch_size", "10"]).lr == pytest.approx(0.0025)
    assert parse_args(["--epoch_size", "10", "--lr", "0.1"]).lr == 0.1


def test_every_field_is_a_flag():
    import dataclasses

    from config import build_parser

    flags = {a.dest for a in build_parser()._actions}
    assert {f.name for f in dataclasses.fields(RunConfig) if f.init} <= flags


def test_sd_2_1_and_tuple_flags():
    cfg = parse_args(["--sd_2_1", "True", "--betas", "0.8", "0.99"])
    assert cfg.sd_model == "stabilityai/stable-diffusion-2-1-base" and cfg.betas == (0.8, 0.99)


def test_preset_fills_values_and_explicit_flags_win():
    cfg = parse_args(["--preset", "digits", "--class_index", "2", "--test_size", "7"])
    assert cfg.height == PRESETS["digits"]["height"] and cfg.sd_model.endswith("digits/pipeline")
    assert cfg.test_size == 7 and cfg.classes == [1]


def test_accumulation_derives_the_micro_batch():
    assert parse_args(["--gradient_accumulation_steps", "5"]).batch_size == 1
    with pytest.raises(UsageError, match="gradient_accumulation_steps"):
        parse_args(["--batch_size", "2", "--gradient_accumulation_steps", "5"])


def test_every_flag_has_the_fields_comment_as_help():
    from config import _field_comments

    comments = _field_comments()
    missing = [f.name for f in dataclasses.fields(RunConfig) if f.init and not comments.get(f.name)]
    assert not missing, missing
    assert "gradient skipping" in comments["grad_steps"]
