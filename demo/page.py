"""The web demo's page: four tabs (Train, Compare, Use the token, Results) and the events that join
them to demo.handlers. Every action is also an API endpoint for gradio_client."""

import inspect
import os
from types import SimpleNamespace as Parts

import gradio as gr

from config import PRESETS, RunConfig
from demo.handlers import CURVES, LOG_HEADERS, Handlers, page_errors, short
from demo.inputs import TOKEN_WORD, class_choices, shown

PRIVATE = dict(api_visibility="private", queue=False)  # page-only events, answered at once
MODEL = dict(concurrency_id="model")  # one job at a time over every endpoint that uses the models
# A CSS height other than "auto" (which caps a gallery at 55% of the window and scrolls inside it):
# every image stays in view.
GALLERY = dict(height="max-content", format="png", object_fit="contain", allow_preview=False)
TYPED = dict(allow_custom_value=True)  # API users may name a token trained after the page was made

INTRO = """# DisCo: discriminative class tokens
Pick a class of the classifier and train a new word S_c for it: only S_c's embedding is optimised, so
that the classifier recognises the class in the generated images. Then the same seeds are drawn with
"A photo of a *class*" and "A photo of S_c *class*"; each image is captioned with the classifier's
prediction (✓: the chosen class). Epochs are counted from 1 everywhere in the page.

{world}"""
DIGITS_NOTE = """**The digits world** (16 px, runs on a CPU): class *N* is the digit *N-1*; "stick" names both
1 and 7, "loop" 0 and 6, "curl" 3 and 8. Try **2: stick** (digit 1). The page proposes {page} epochs
(the preset's run has {preset}), so that training and comparison take about a minute on 2 CPU cores."""


def preset_epochs(cfg: RunConfig) -> int:
    """The epochs of the run the page stands for: the preset's, else run.py's default."""
    return PRESETS.get(cfg.preset, {}).get("num_train_epochs", RunConfig.num_train_epochs)


def intro(cfg: RunConfig, max_epochs: int) -> str:
    if cfg.preset == "digits":
        world = DIGITS_NOTE.format(page=min(cfg.num_train_epochs, max_epochs), preset=preset_epochs(cfg))
    else:
        world = f"Model `{short(cfg.sd_model)}`, classifier `{short(cfg.classifier)}`."
    return INTRO.format(world=world)


def folder_name(path: str) -> str:
    """The output folder relative to where the server started, never an absolute server path."""
    rel = os.path.relpath(path)
    return f"`{rel}`" if not rel.startswith("..") else "the server's --output_path"


def field(value, label: str, elem_id: str | None = None, **kw) -> gr.Textbox:
    """A number field as text: the handlers parse it, so 'abc' gets the same one-line message as 0."""
    return gr.Textbox(str(value), label=label, max_lines=1, elem_id=elem_id, **kw)


def train_tab(h: Handlers) -> Parts:
    cfg, lim, labels = h.jobs.cfg, h.jobs.limits, h.labels
    choices = class_choices(labels)
    # run.py's --class_index (283, tiger cat, for ImageNet); class 2 where it does not exist (digits).
    first = next((c for c in cfg.classes if c < len(labels)), min(1, len(labels) - 1))
    p = Parts()
    with gr.Row():
        label = "class (type to search)"
        p.cls = gr.Dropdown(choices, value=choices[first], label=label, elem_id="class", scale=3, **TYPED)
        epochs = min(cfg.num_train_epochs, lim.max_epochs)
        p.epochs = field(epochs, f"epochs (at most; 1..{lim.max_epochs})", "epochs")
        p.lr = field(cfg.lr, "lr (above 0, at most 10)", "lr")
        p.seed = field(cfg.seed, "seed", "seed")
        p.grad_steps = field(cfg.grad_steps, f"grad_steps (1..{cfg.num_of_SD_inference_steps})", "grad-steps")
    with gr.Row():
        p.train = gr.Button("Train", variant="primary", elem_id="train-btn")
        p.stop = gr.Button("Stop (keep the best token so far)", elem_id="stop-btn")
    p.status = gr.Markdown(elem_id="train-status")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            p.curves = curve_plots("curve")
        p.images = gr.Gallery(label="this epoch's images", elem_id="epoch-images", columns=6, scale=2, **GALLERY)
    with gr.Accordion("training log (table)", open=False):
        p.log = gr.Dataframe(headers=LOG_HEADERS, label="training log", max_height=250)
    p.trained = gr.Textbox(label="trained token (<class dir>/<run>)", interactive=False, elem_id="trained")
    return p


def curve_plots(elem_id: str) -> list[gr.LinePlot]:
    """The loss and the accuracy per epoch (demo.handlers.curves feeds them)."""
    return [
        gr.LinePlot(None, x="epoch", y=k, y_lim=[0, top], label=f"{k} per epoch", elem_id=f"{elem_id}-{k}", height=200)
        for k, top in zip(CURVES, (None, 1))
    ]


def compare_tab(h: Handlers) -> Parts:
    cfg, lim = h.jobs.cfg, h.jobs.limits
    p = Parts()
    with gr.Row():
        p.run = gr.Dropdown([], label="token", elem_id="cmp-run", scale=3, **TYPED)
        seeds = min(cfg.test_size, lim.max_seeds)
        p.seeds = field(seeds, f"seeds (1..{lim.max_seeds}), from {cfg.eval_seed}", "cmp-seeds")
        p.go = gr.Button("Compare", variant="primary", elem_id="cmp-btn")
    p.summary = gr.Markdown(elem_id="compare-summary")
    with gr.Row():
        # Labelled with their prompts once compared (the real class name); Gradio's thumbnails are at
        # least 100 px wide, so 5 columns fit half a page without a side scroll.
        p.base = gr.Gallery(label="A photo of a …", elem_id="baseline-images", columns=5, **GALLERY)
        p.token = gr.Gallery(label=f"A photo of {TOKEN_WORD} …", elem_id="token-images", columns=5, **GALLERY)
    word = cfg.placeholder_token
    with gr.Accordion(f"metrics.json (the file writes {TOKEN_WORD} as the tokenizer's word, {word})", open=False):
        p.metrics = gr.JSON()
    return p


def use_tab(h: Handlers) -> Parts:
    lim = h.jobs.limits
    p = Parts()
    with gr.Row():
        p.run = gr.Dropdown([], label="token", elem_id="use-run", scale=3, min_width=320, **TYPED)
        p.prompt = gr.Textbox(label=f"prompt ({TOKEN_WORD} = the token)", scale=3)
        p.seed = field(0, "first seed")
        p.images = field(min(4, lim.max_images), f"images (1..{lim.max_images})")
        p.go = gr.Button("Generate", variant="primary")
    p.gallery = gr.Gallery(label="images", columns=8, fit_columns=False, **GALLERY)
    p.file = gr.File(label="learned_embeds.safetensors (any diffusers pipeline: load_textual_inversion)")
    return p


def results_tab(h: Handlers) -> Parts:
    p = Parts()
    gr.Markdown(f"Output folder: {folder_name(h.jobs.cfg.output_path)}. Its results.csv, each token's files.")
    p.refresh = gr.Button("Refresh")
    p.table = gr.Dataframe(label="results.csv", interactive=False)
    with gr.Row():
        p.run = gr.Dropdown([], label="token folder", elem_id="res-run", scale=3, **TYPED)
        p.open = gr.Button("Open")
        p.use = gr.Button("Load into Compare and Use")
    p.text = gr.Markdown()
    word = h.jobs.cfg.placeholder_token
    grid = "the baseline prompt's images (top) over the token's (bottom); the file writes the tokenizer's word"
    gr.Markdown(f"**grid.png**: {grid} {word} for {TOKEN_WORD}, and 0-based class indices")
    p.grid = gr.Image(show_label=False, type="filepath", elem_id="grid")
    with gr.Row():
        p.curves = curve_plots("res-curve")
    p.log = gr.Dataframe(headers=LOG_HEADERS, label="train_log.jsonl (epochs from 1)", max_height=250)
    p.files = gr.File(label="files", file_count="multiple")
    p.dl_path, p.dl_file = gr.Textbox(visible=False), gr.File(visible=False)
    return p


def wire(demo: gr.Blocks, h: Handlers, tabs, t: Parts, c: Parts, u: Parts, r: Parts, results_sel) -> None:
    """The events: each action an endpoint named after it; page-only events private."""
    err = page_errors
    compared = [c.base, c.token, c.summary, c.metrics]
    lists = [c.run, u.run, r.run]
    opened = [r.grid, *r.curves, r.log, r.text, r.files]
    c.go.click(err(h.compare), [c.run, c.seeds], compared, api_name="compare", **MODEL).success(
        h.gallery_labels, c.metrics, [c.base, c.token], **PRIVATE
    )
    trained = t.train.click(
        err(h.train), [t.cls, t.epochs, t.lr, t.seed, t.grad_steps], [t.status, t.images, *t.curves, t.log, t.trained],
        api_name="train", **MODEL,
    )  # fmt: skip
    t.stop.click(h.stop, None, t.status, api_name="stop", queue=False)
    # In the page, a finished training goes straight on to its comparison, and every list shows it.
    trained.success(h.pick_token, t.trained, [c.run, u.run, tabs], **PRIVATE).then(
        err(h.compare), [c.run, c.seeds], compared, api_name="compare_trained", api_visibility="private", **MODEL
    ).success(h.gallery_labels, c.metrics, [c.base, c.token], **PRIVATE).then(h.token_lists, lists, lists, **PRIVATE)
    u.go.click(err(h.generate), [u.run, u.prompt, u.seed, u.images], [u.gallery, u.file], api_name="generate", **MODEL)
    u.run.change(h.token_picked, u.run, [u.prompt, u.file], **PRIVATE)
    r.open.click(err(h.open_run), r.run, opened, api_name="open_run", queue=False)
    r.run.input(err(h.show_run), r.run, opened, **PRIVATE)
    r.use.click(h.pick_token, r.run, [c.run, u.run, tabs], **PRIVATE)
    r.dl_path.submit(err(h.download), r.dl_path, r.dl_file, api_name="download", queue=False)
    # The output folder is read afresh at every page load and refresh: tokens trained since the start
    # (by anyone) are in every list.
    for event in (demo.load, r.refresh.click, results_sel):
        event(h.token_lists, lists, lists, **PRIVATE).then(h.show_results, None, r.table, **PRIVATE).then(
            err(h.show_run), r.run, opened, **PRIVATE
        )
    gr.api(h.api_results, api_name="results", queue=False)
    gr.api(h.api_classes, api_name="classes", queue=False)


TEXT = (gr.Textbox, gr.Dropdown)  # every field an endpoint reads: the handlers parse its text


class Page(gr.Blocks):
    """gr.Blocks whose endpoints answer missing or malformed inputs with a message naming them; Gradio's
    own check raises an error that its API shows as {"error": null}. Runs before any input is read."""

    def validate_inputs(self, block_fn, inputs: list):
        names = input_names(block_fn)
        if len(inputs) < len(names):
            endpoint = f"/{block_fn.api_name} takes" if block_fn.api_name else "takes"
            missing = ", ".join(names[len(inputs) :])
            raise gr.Error(f"missing inputs: {missing} ({endpoint} {', '.join(names)})", print_exception=False)
        for name, block, value in zip(names, block_fn.inputs, inputs):
            # Only what clients can call: the page's own events send only its fields' values.
            if block_fn.api_visibility != "private" and isinstance(block, TEXT) and not text_like(value):
                raise gr.Error(f"{name} {shown(value)}: must be text or a number", print_exception=False)
        super().validate_inputs(block_fn, inputs)


def text_like(value) -> bool:
    """What a text field holds as JSON: text, a number or nothing (a list, an object or a boolean is not)."""
    return value is None or isinstance(value, str | int | float) and not isinstance(value, bool)


def input_names(block_fn) -> list[str]:
    """An event's inputs by the names the API lists (its handler's parameters), else by position."""
    try:
        params = inspect.signature(block_fn.fn).parameters.values()
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and p.annotation is not gr.Request]
    if len(names) != len(block_fn.inputs):
        names = [f"input {i + 1}" for i in range(len(block_fn.inputs))]
    return names


def build_ui(jobs) -> gr.Blocks:
    h = Handlers(jobs)
    with Page(title="DisCo demo", delete_cache=(3600, 6 * 3600)) as demo:
        gr.Markdown(intro(jobs.cfg, jobs.limits.max_epochs))
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                t = train_tab(h)
            with gr.Tab("Compare", id="compare"):
                c = compare_tab(h)
            with gr.Tab("Use the token", id="use"):
                u = use_tab(h)
            with gr.Tab("Results", id="results") as results:
                r = results_tab(h)
        wire(demo, h, tabs, t, c, u, r, results.select)
    return demo
