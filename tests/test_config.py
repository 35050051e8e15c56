"""The command line is generated from RunConfig: 1-based indices, booleans, derived values."""

import dataclasses

import pytest
from conftest import ROOT

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
    assert cfg.loss_scale == 2.0**16 and cfg.reseed_on_collapse and not cfg.fresh_noise


def test_templates_are_the_originals_31_in_order():
    from prompt_datasets import TEMPLATES, PromptDataset

    original = [  # the original's prompt_dataset.py imagenet_templates_small (docs/original.md §2)
        "A photo of {}", "a high resolution realistic image of {}", "A close-up photo of a {}", "A rendition of a {}",
        "a photo of a nice {}", "A painting of a {}", "a good photo of a {}", "the photo of a {}",
        "a bright photo of the {}", "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}",
        "a photo of my {}", "a photo of the cool {}", "a bright photo of the {}", "a cropped photo of a {}",
        "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
        "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
        "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
        "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
    ]  # fmt: skip
    assert TEMPLATES == original
    prompts = PromptDataset("newclas", "tiger cat", 31, 31).epoch(35, 0)
    assert sorted(prompts) == sorted(t.format("newclas") + " tiger cat" for t in original)
    assert parse_args(["--number_of_prompts", "31"]).number_of_prompts == 31
    with pytest.raises(UsageError, match="number_of_prompts"):
        parse_args(["--number_of_prompts", "32"])


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


def test_a_presets_snapshots_need_no_flag_to_evaluate_only(tmp_path):
    """The digits preset takes snapshots while training; evaluating its tokens (--train False) must not ask
    the user to switch off a flag they never gave, while an explicit --select_every still does."""
    out = ["--output_path", str(tmp_path)]
    assert parse_args(["--preset", "digits", "--train", "False", *out]).select_every == 0
    assert parse_args(["--preset", "digits", *out]).select_every == PRESETS["digits"]["select_every"] > 0
    with pytest.raises(UsageError, match="--select_every 10: needs --train True"):
        parse_args(["--preset", "digits", "--train", "False", "--select_every", "10", *out])


def test_a_presets_retries_give_way_to_evaluating_or_to_one_run(tmp_path):
    """The digits preset trains up to 3 candidates, more only where the token falls short (--retry_below):
    evaluating only, or asking for one run, needs no flag to switch that off; an explicit margin still asks."""
    out = ["--output_path", str(tmp_path)]
    cfg = parse_args(["--preset", "digits", *out])
    assert (cfg.candidates, cfg.retry_below) == (PRESETS["digits"]["candidates"], PRESETS["digits"]["retry_below"])
    cfg = parse_args(["--preset", "digits", "--train", "False", *out])
    assert (cfg.candidates, cfg.retry_below) == (1, None)
    assert parse_args(["--preset", "digits", "--candidates", "1", *out]).retry_below is None
    assert parse_args(["--preset", "digits-flow", *out]).retry_below is None  # not measured in the flow world
    # plain --candidates 3 with the preset: every candidate trained, the retries off
    assert parse_args(["--preset", "digits", "--retry_below", "none", *out]).retry_below is None
    assert parse_args(["--lr", "None", *out]).lr == 0.00025 * 5  # None: derived from epoch_size
    with pytest.raises(UsageError, match="--retry_below 5.0: needs --candidates 2 or more"):
        parse_args(["--preset", "digits", "--candidates", "1", "--retry_below", "5", *out])


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


def test_replace_keeps_the_classes():
    import dataclasses

    cfg = parse_args(["--class_index", "3-4"])
    assert dataclasses.replace(cfg, lr=0.5).classes == [2, 3]
    assert dataclasses.replace(cfg, class_index="7").classes == [6]


def test_configuration_page_is_generated_from_the_dataclass():
    """docs/configuration.md is `python config.py`'s output: a new or changed field fails here until the page
    is regenerated; every flag of the parser is on it."""
    import config

    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == config.markdown(), "regenerate: python config.py > docs/configuration.md"
    for action in config.build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert f"`--{action.dest}`" in page


@pytest.mark.parametrize("presets", ["digits,original", "original,digits", "original"])
def test_original_preset_wins_for_what_the_original_code_hard_codes(presets, tmp_path):
    """`original` sets the original code's fixed rules in any order of presets (the digits world asks for
    15 gradient steps, a 0.95 accuracy stop and snapshots); the world keeps what the original reads from
    its config."""
    from config import ORIGINAL_RULES

    cfg = parse_args(["--preset", presets, "--output_path", str(tmp_path)])
    assert {k: getattr(cfg, k) for k in ORIGINAL_RULES} == ORIGINAL_RULES
    assert (cfg.grad_steps, cfg.accuracy_stop, cfg.select_every, cfg.candidates, cfg.batch_size) == (1, 0.7, 0, 1, 1)
    assert cfg.retry_below is None
    assert cfg.clip_before_backward and cfg.decay_vocabulary and cfg.pad_to_longest and cfg.plain_clamp
    world = parse_args(["--preset", "digits" if "digits" in presets else "", "--output_path", str(tmp_path)])
    for key in ("sd_model", "height", "num_of_SD_inference_steps", "guidance_scale", "lr", "epoch_size"):
        assert getattr(cfg, key) == getattr(world, key)
    # its defects can be turned off one at a time
    assert not parse_args(["--preset", presets, "--plain_clamp", "False", "--output_path", str(tmp_path)]).plain_clamp


@pytest.mark.parametrize(
    "flag, value, fixed",
    [
        ("grad_steps", "15", "1"),
        ("accuracy_stop", "0.95", "0.7"),
        ("select_every", "10", "0"),
        ("candidates", "3", "1"),
        ("batch_size", "4", "1"),
        ("class_batch", "2", "1"),
        ("fresh_noise", "True", "False"),
        ("retry_below", "5.0", None),
    ],
)
def test_a_flag_the_original_cannot_follow_is_refused(flag, value, fixed, tmp_path, capsys):
    from run import main

    out = tmp_path / "out"
    assert main(["--preset", "digits,original", f"--{flag}", value, "--output_path", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"run.py: error: --{flag} {parse_value(flag, value)!r}: --preset original runs the original code, "
        + ("which has no such step" if fixed is None else f"which hard-codes {parse_value(flag, fixed)!r}")
    )
    # the same value as the rule is accepted
    assert fixed is None or parse_args(["--preset", "original", f"--{flag}", fixed, "--output_path", str(out)])


def parse_value(flag: str, text: str):
    return {"True": True, "False": False}.get(
        text, float(text) if "." in text else int(text) if text.isdigit() else text
    )
