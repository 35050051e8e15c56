"""The saved token is diffusers' textual-inversion format and works in a plain pipeline; the embeddings folder
holds it for ComfyUI and AUTOMATIC1111."""

import re

import torch
from safetensors.torch import load_file

from diffusion import generate, load_sd, set_token
from tokens import load_token, save_token


def test_token_round_trips_through_load_textual_inversion(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    sd = load_sd(tiny["sd"], torch.device("cpu"), torch.float32, size=(16, 16), placeholder="newclas", initializer="a")
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
    # Measured: identical at 1 and 2 threads; the same pipeline comparison in test_batching.py differs by up
    # to 6.3e-7 where batch sizes differ, so the tolerance is test_batching's IMAGE_ATOL.
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
    sd = load_sd(str(root), torch.device("cpu"), torch.float32, size=(16, 16), placeholder="newclas", initializer="a")
    loaded = {k.removeprefix("text_model."): v for k, v in sd.text_encoder.state_dict().items()}
    for k, v in state.items():
        if k != "embeddings.token_embedding.weight":  # resized by one row for S_c
            assert torch.equal(loaded[k], v), k
    assert torch.equal(loaded["embeddings.token_embedding.weight"][:-1], state["embeddings.token_embedding.weight"])


def test_embedding_word_is_one_prompt_word_in_comfyui_and_automatic1111():
    """Neither tool's prompt syntax may cut or weight the word: no space (ComfyUI ends a name there), comma,
    parentheses, brackets, colon (weights), <, | or dot (a file name's extension)."""
    from tokens import embedding_word

    assert embedding_word("283_tiger_cat", "default") == "disco-283_tiger_cat"
    assert embedding_word("283_tiger_cat", "lr 0.1") == "disco-283_tiger_cat-lr_0_1"
    odd = embedding_word("247_St._Bernard", "a (b): [c], <d>|e")
    assert odd == "disco-247_St_Bernard-a_b_c_d_e" and re.fullmatch(r"[A-Za-z0-9_-]+", odd)


def test_embeddings_folder_holds_one_emb_params_file_per_class_and_experiment(tiny, tmp_path):
    """Every run writes <output_path>/embeddings/<word>.safetensors, SD 1.x's one-tensor layout ({"emb_params":
    [1, d]}) with the class and experiment in its metadata; the same class and experiment run again replaces
    its own file; nothing else is in that folder; diffusers loads the file under its word."""
    from conftest import tiny_args
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from run import main

    emb = tmp_path / "embeddings"
    words = {"default": "disco-2_tiger_cat", "lr 0.1": "disco-2_tiger_cat-lr_0_1"}
    first = None
    for extra in (["--seed", "36"], ["--seed", "35"], ["--exp_id", "lr 0.1"]):
        assert main(tiny_args(tiny, tmp_path, "--evaluate", "False", *extra)) == 0
        first = first if first is not None else load_file(emb / "disco-2_tiger_cat.safetensors")["emb_params"]
    assert sorted(p.name for p in emb.iterdir()) == sorted(f"{w}.safetensors" for w in words.values())
    for exp_id, word in words.items():
        plain = load_file(tmp_path / "pipeline_token" / "2_tiger_cat" / exp_id / "learned_embeds.safetensors")
        webui = load_file(emb / f"{word}.safetensors")
        assert list(webui) == ["emb_params"] and torch.equal(webui["emb_params"][0], plain["newclas"])
        with safe_open(str(emb / f"{word}.safetensors"), framework="pt") as f:
            meta = f.metadata()
        assert meta["disco_class"] == "2_tiger_cat" and meta["disco_exp_id"] == exp_id
        assert meta["disco_class_index"] == "2" and meta["disco_class_name"] == "tiger cat"
        assert meta["sd_model"] == tiny["sd"] and meta["disco_family"] == "SD 1.x/2.x"
    value = load_file(emb / "disco-2_tiger_cat.safetensors")["emb_params"][0]
    assert not torch.equal(first[0], value)  # the seed-36 file was replaced by the same class's seed-35 run
    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(emb / "disco-2_tiger_cat.safetensors"), token="disco-2_tiger_cat")
    assert pipe.tokenizer.tokenize("A photo of disco-2_tiger_cat tiger cat")[3] == "disco-2_tiger_cat"
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("disco-2_tiger_cat")]
    assert torch.equal(row, value)
