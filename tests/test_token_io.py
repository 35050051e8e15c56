"""The saved token is diffusers' textual-inversion format and works in a plain pipeline."""

import torch
from safetensors.torch import load_file

from diffusion import generate, load_sd, set_token
from tokens import load_token, save_token


def test_token_round_trips_through_load_textual_inversion(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    sd = load_sd(tiny["sd"], torch.device("cpu"), torch.float32, (16, 16), "newclas", "a")
    value = torch.randn_like(sd.token)
    path = tmp_path / "learned_embeds.safetensors"
    save_token(path, sd, "newclas", value)
    assert list(load_file(path)) == ["newclas"] and torch.equal(load_token(path, sd, "newclas"), value)

    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(path), token="newclas")
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("newclas")]
    assert torch.equal(row, value)

    # The pipeline with the loaded token draws the same image as our generation with it.
    set_token(sd, value)
    prompt = "A photo of newclas tiger cat"
    ours = generate(sd, prompt, [3], steps=3, guidance=7.5, batch_size=1)
    g = torch.Generator().manual_seed(3)
    theirs = pipe(prompt, height=16, width=16, num_inference_steps=3, generator=g, output_type="pt").images
    torch.testing.assert_close(ours.clamp(0, 1), theirs, atol=1e-5, rtol=0)


def test_text_encoder_with_old_text_model_prefix_loads(tiny, tmp_path):
    """The hub's SD 1.4 text encoder keys start with `text_model.` (transformers 4 layout)."""
    import shutil

    from safetensors.torch import save_file

    root = tmp_path / "sd"
    shutil.copytree(tiny["sd"], root)
    f = root / "text_encoder" / "model.safetensors"
    # transformers 5 saves the keys without the prefix, 4.x (the floor) with it: compare without.
    state = {k.removeprefix("text_model."): v for k, v in load_file(f).items()}
    save_file({f"text_model.{k}": v for k, v in state.items()}, f, metadata={"format": "pt"})
    sd = load_sd(str(root), torch.device("cpu"), torch.float32, (16, 16), "newclas", "a")
    loaded = {k.removeprefix("text_model."): v for k, v in sd.text_encoder.state_dict().items()}
    for k, v in state.items():
        if k != "embeddings.token_embedding.weight":  # resized by one row for S_c
            assert torch.equal(loaded[k], v), k
    assert torch.equal(loaded["embeddings.token_embedding.weight"][:-1], state["embeddings.token_embedding.weight"])


def test_webui_token_is_one_emb_params_row_that_diffusers_loads(tiny, tmp_path):
    """--webui_token for SD 1.x: the single-tensor layout AUTOMATIC1111 saves ({"emb_params": [1, d]}),
    named after the class directory (those tools take the file name as the prompt word)."""
    from conftest import tiny_args
    from diffusers import StableDiffusionPipeline

    from run import main

    assert main(tiny_args(tiny, tmp_path, "--webui_token", "--evaluate", "False")) == 0
    folder = tmp_path / "pipeline_token" / "2_tiger_cat" / "default"
    webui, plain = load_file(folder / "2_tiger_cat.safetensors"), load_file(folder / "learned_embeds.safetensors")
    assert list(webui) == ["emb_params"] and webui["emb_params"].shape == (1, len(plain["newclas"]))
    assert torch.equal(webui["emb_params"][0], plain["newclas"])
    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(folder / "2_tiger_cat.safetensors"), token="2_tiger_cat")
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("2_tiger_cat")]
    assert torch.equal(row, plain["newclas"])
