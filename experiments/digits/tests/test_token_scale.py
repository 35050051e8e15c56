"""experiments/digits/token_scale.py: points along a token's offset from the initializer, judged on the digits world."""

import torch

from experiments.digits.token_scale import along, main


def test_along_runs_from_the_initializer_through_the_token():
    init, token = torch.zeros(4), torch.arange(4.0)
    zero, one, two = along(init, token, [0, 1, 2])
    assert torch.equal(zero, init) and torch.equal(one, token) and torch.equal(two, 2 * token)


def test_scale_zero_is_the_baseline_prompt(tmp_path, capsys):
    """A token file holding the initializer's row: every scale draws the baseline's images, so every cell
    is the same; a random token at scale 0 is the initializer again."""
    from config import parse_args
    from diffusion import load_sd
    from tokens import save_token

    cfg = parse_args(["--preset", "digits", "--device", "cpu"])
    sd = load_sd(
        cfg.sd_model,
        torch.device("cpu"),
        torch.float32,
        size=(16, 16),
        placeholder=cfg.placeholder_token,
        initializer="a",
    )
    save_token(tmp_path / "init.safetensors", sd, cfg.placeholder_token, sd.init_embedding)
    save_token(tmp_path / "random.safetensors", sd, cfg.placeholder_token, 3 * torch.randn_like(sd.init_embedding))
    files = [str(tmp_path / f) for f in ("init.safetensors", "random.safetensors")]
    main([*files, "--class_index", "4", "4", "--scales", "0", "1", "--seeds", "20"])
    init_row, random_row = capsys.readouterr().out.strip().splitlines()[2:]
    cells = [row.rstrip(" |").split(" | ")[2:] for row in (init_row, random_row)]
    assert cells[0][0] == cells[0][1] == cells[1][0]
