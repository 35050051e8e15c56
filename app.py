"""The web demo: train a DisCo token in the browser, compare it with the plain prompt, use it.

python app.py                                   # the digits world on http://127.0.0.1:7860
python app.py --sd_model CompVis/stable-diffusion-v1-4 --classifier inet --host 0.0.0.0   # SD 1.4, GPU

Model flags are run.py's (config.py, one parser); the server's own flags are below. Every
action is an API endpoint (/train, /stop, /compare, /generate, /results, /open_run, /download, /classes)
for gradio_client. The work itself is app_jobs.py; this file is the page.
"""

import argparse
import functools
import inspect
import os
import shlex
import sys
import threading
import traceback

from app_jobs import TOKEN_WORD, Jobs, Limits
from config import RunConfig, build_parser, parse_args
from utils import UsageError

# Without a model flag the demo opens on the shipped digits world: it works offline on a CPU.
MODEL_FLAGS = ("preset", "sd_model", "sd_2_1", "classifier", "eval_classifier")
DEFAULT_OUTPUT = "out/demo"  # not the repository root: Gradio may serve every file in this folder
# The page's default epochs on the digits world: the preset allows 50, but 30 keep a training plus
# comparison within 90 s on a 2-core CPU (README, Demo); --num_train_epochs or the page sets more.
DIGITS_EPOCHS = 30


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as run.py
        raise UsageError(message)


def server_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = _Parser(prog="app.py", add_help=False, allow_abbrev=False, description="DisCo web demo.", formatter_class=fmt)
    p.add_argument("-h", "--help", action="store_true", help="this help, then run.py's flags")
    # Gradio's own variables (a Hugging Face Space sets them) stand in for --host and --port.
    host, port = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    p.add_argument("--host", default=host, help="address to listen on; 0.0.0.0 opens it to the network")
    p.add_argument("--port", type=int, default=port, help="port")
    p.add_argument("--share", action="store_true", help="also open a temporary public *.gradio.live link")
    p.add_argument("--max_epochs", type=int, default=Limits.max_epochs, help="most epochs per training request")
    p.add_argument("--max_seeds", type=int, default=Limits.max_seeds, help="most seeds per comparison")
    p.add_argument("--max_images", type=int, default=Limits.max_images, help="most images per generation")
    p.add_argument("--max_queue", type=int, default=16, help="most requests waiting; more are turned away")
    return p


def parse_app_args(argv: list[str]) -> tuple[argparse.Namespace, RunConfig]:
    """The server's flags, then everything else through run.py's own parser (config.parse_args),
    with --preset digits when no model flag is given and the demo's own output folder."""
    args, rest = server_parser().parse_known_args(argv)
    if args.help:
        print(server_parser().format_help() + "\nrun.py's flags (models, output, training defaults):\n")
        print(build_parser().format_help().split("\n\n", 1)[1])
        sys.exit(0)
    given = vars(build_parser().parse_args(rest))  # the run.py flags given (abbreviations resolved)
    if not given.keys() & set(MODEL_FLAGS):
        given["preset"], rest = "digits", ["--preset", "digits", *rest]
    if "output_path" not in given:
        rest += ["--output_path", DEFAULT_OUTPUT]
    if given.get("preset") == "digits" and "num_train_epochs" not in given:
        rest += ["--num_train_epochs", str(DIGITS_EPOCHS)]
    for flag in ("max_epochs", "max_seeds", "max_images", "max_queue"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} {getattr(args, flag)}: must be a positive integer")
    return args, parse_args(rest)


def page_errors(fn):
    """Bad input becomes a message in the page (and the API's error), never a stack trace; the
    server keeps running. Unexpected failures are logged here and shown as one line."""
    import gradio as gr

    def convert(e: Exception) -> Exception:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, UsageError):
            return gr.Error(str(e), print_exception=False)
        traceback.print_exc()
        return gr.Error(f"internal error ({type(e).__name__}: {str(e)[:200]}); the server log has the details")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*a, **k):
            try:
                yield from fn(*a, **k)
            except Exception as e:
                raise convert(e) from None

        return gen

    @functools.wraps(fn)
    def call(*a, **k):
        try:
            return fn(*a, **k)
        except Exception as e:
            raise convert(e) from None

    return call


INTRO = """# DisCo: discriminative class tokens
Pick a class of the classifier and train a new word S_c for it: only S_c's embedding is optimised, so
that the classifier recognises the class in the generated images. Then the same seeds are drawn with
"A photo of a *class*" and "A photo of S_c *class*"; each image is captioned with the classifier's
prediction (✓: the chosen class).

{world}"""
DIGITS_NOTE = """**The digits world** (16 px, runs on a CPU): class *N* is the digit *N-1*; "stick" names both
1 and 7, "loop" 0 and 6, "curl" 3 and 8. Try **2: stick** (digit 1). The page proposes 30 epochs
(the preset allows 50): training and comparison take well under 90 s on 2 CPU cores."""


def short(model: str) -> str:
    """A local model folder as the user would name it (digits/classifier), a hub id as it is."""
    if os.path.isabs(model) and not os.path.relpath(model).startswith(".."):
        return os.path.relpath(model)
    return model


def build_ui(jobs: Jobs):
    import gradio as gr

    cfg, lim = jobs.cfg, jobs.limits
    stops: dict[str, threading.Event] = {}  # session -> its training's stop flag
    private = dict(api_visibility="private", queue=False)
    model = dict(concurrency_id="model")  # one job at a time over all model endpoints
    gallery = dict(height="auto", format="png", object_fit="contain", allow_preview=False)
    runs = jobs.runs()
    # Token names are checked by app_jobs (inside the output folder), so API users may name a token
    # trained after their page's list was made.
    typed = dict(allow_custom_value=True)

    def captioned(images, preds, target):
        return [(jobs.view(im), jobs.caption(p, target)) for im, p in zip(images, preds)]

    @page_errors
    def train(class_choice, epochs, lr, seed, grad_steps, request: gr.Request):
        c, stop = jobs.parse_class(class_choice), threading.Event()
        stops[request.session_hash] = stop
        rows, shown = [], None
        try:
            for ev in jobs.train(class_choice, epochs, lr, seed, grad_steps, stop):
                if "summary" in ev:
                    s = ev["summary"]
                    done = f"done: {s['epochs']} epochs, {s['seconds']:.0f} s; stopped: {s['stop']}"
                    yield f"{done}; kept {s['kept_token']}", shown, rows, ev["run"]
                    break
                e = ev["entry"]
                rows.append([e["epoch"] + 1, *(round(e[k], 4) for k in ("loss", "accuracy", "grad_norm"))])
                shown = captioned(ev["images"], e["predictions"], c)
                status = f"epoch {e['epoch'] + 1}/{int(epochs)}: loss {e['loss']:.3f}, accuracy {e['accuracy']:.0%}"
                yield status, shown, rows, gr.update()
        finally:
            if stops.get(request.session_hash) is stop:
                del stops[request.session_hash]

    def stop(request: gr.Request):  # only the asking session's own training
        if request.session_hash not in stops:
            return "no training of yours to stop"
        stops.pop(request.session_hash).set()
        return "stopping after this epoch; the best token so far is kept"

    @page_errors
    def compare(run, seeds):
        r = jobs.compare(run, seeds)
        m, t = r["metrics"], r["target"]
        lines = []
        for role in ("classifier", "eval_classifier"):
            if role in m:
                acc = m[role]
                line = f"baseline {acc.get('baseline_accuracy', 0):.0%} → token {acc.get('token_accuracy', 0):.0%}"
                lines.append(f"**{role}** ({short(acc.get('name', ''))}): {line}")
        s = m["seeds"]
        lines.append(
            f"{len(s)} seeds ({s[0]}..{s[-1]}); prompts: “{m['prompts']['baseline']}” vs “{m['prompts']['token']}”"
        )
        shown = {k: captioned(*r["shown"][k], t) for k in ("baseline", "token")}
        return shown["baseline"], shown["token"], "\n\n".join(lines), m

    @page_errors
    def generate(run, prompt, seed, images):
        r = jobs.generate(run, prompt, seed, images)
        return captioned(r["images"], r["preds"], r["target"]), str(r["token"])

    def token_picked(run):
        """Use tab: a prompt with S_c for the picked token, and its file to download."""
        try:
            c, paths = jobs.run_paths(run)
        except UsageError:
            return gr.update(), None
        return f"a photo of {TOKEN_WORD} {jobs.labels[c]}", str(paths.token)

    def show_results(current):  # the Results tab, keeping the token folder picked if it is still there
        headers, rows = jobs.results()
        names = jobs.runs()
        pick = current if current in names else names[0] if names else None
        return dict(headers=headers, data=rows), gr.Dropdown(choices=names, value=pick)

    @page_errors
    def open_run(run):
        r = jobs.open_run(run)
        log = [
            [e["epoch"] + 1, *(round(e.get(k) or 0, 4) for k in ("loss", "accuracy", "grad_norm"))] for e in r["log"]
        ]
        text = ""
        if r["summary"]:
            s = r["summary"]
            text += f"{s.get('epochs')} epochs in {s.get('seconds')} s; stopped: {s.get('stop')}; "
            text += f"kept {s.get('kept_token')}"
        for role in ("classifier", "eval_classifier"):
            acc = r["metrics"].get(role, {})
            if "token_accuracy" in acc:
                text += f"\n\n**{role}**: baseline {acc['baseline_accuracy']:.0%} → token {acc['token_accuracy']:.0%}"
        grid = str(r["grid"]) if r["grid"] else None
        return grid, log, text or "no summary yet", [str(f) for f in r["files"]]

    def show_run(run):
        return open_run(run) if run else (None, [], "no trained token in the output folder yet", [])

    @page_errors
    def download(path):
        return str(jobs.file(path))

    def pick_token(run):  # after training / from Results: the token goes to Compare and Use
        names = jobs.runs()
        return gr.Dropdown(choices=names, value=run), gr.Dropdown(choices=names, value=run), gr.Tabs(selected="compare")

    world = (
        DIGITS_NOTE
        if cfg.preset == "digits"
        else f"Model `{short(cfg.sd_model)}`, classifier `{short(cfg.classifier)}`."
    )
    with gr.Blocks(title="DisCo demo", delete_cache=(3600, 6 * 3600)) as demo:
        gr.Markdown(INTRO.format(world=world))
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    # run.py's --class_index (283, tiger cat, for ImageNet); class 2 where it does not exist (digits).
                    first = next((c for c in cfg.classes if c < len(jobs.labels)), min(1, len(jobs.labels) - 1))
                    cls = gr.Dropdown(
                        jobs.class_choices(),
                        value=jobs.class_choices()[first],
                        label="class (type to search)",
                        allow_custom_value=True,
                        elem_id="class",
                        scale=3,
                    )
                    epochs = gr.Number(
                        min(cfg.num_train_epochs, lim.max_epochs),
                        precision=0,
                        label=f"epochs (at most; 1..{lim.max_epochs})",
                        elem_id="epochs",
                    )
                    lr = gr.Number(cfg.lr, label="lr")
                    seed = gr.Number(cfg.seed, precision=0, label="seed")
                    grad_steps = gr.Number(
                        cfg.grad_steps, precision=0, label=f"grad_steps (1..{cfg.num_of_SD_inference_steps})"
                    )
                with gr.Row():
                    train_btn = gr.Button("Train", variant="primary", elem_id="train-btn")
                    stop_btn = gr.Button("Stop (keep the best token so far)", elem_id="stop-btn")
                status = gr.Markdown(elem_id="train-status")
                epoch_images = gr.Gallery(label="this epoch's images", elem_id="epoch-images", columns=10, **gallery)
                log = gr.Dataframe(
                    headers=["epoch", "loss", "accuracy", "grad_norm"], label="training log", max_height=250
                )
                trained = gr.Textbox(label="trained token", interactive=False, elem_id="trained")
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    cmp_run = gr.Dropdown(runs, value=runs[0] if runs else None, label="token", **typed, scale=3)
                    cmp_seeds = gr.Number(
                        min(cfg.test_size, lim.max_seeds),
                        precision=0,
                        label=f"seeds (1..{lim.max_seeds}), from {cfg.eval_seed}",
                    )
                    cmp_btn = gr.Button("Compare", variant="primary")
                summary = gr.Markdown(elem_id="compare-summary")
                with gr.Row():
                    base_gallery = gr.Gallery(
                        label="A photo of a <class>", elem_id="baseline-images", columns=5, **gallery
                    )
                    token_gallery = gr.Gallery(
                        label="A photo of S_c <class>", elem_id="token-images", columns=5, **gallery
                    )
                with gr.Accordion("metrics.json", open=False):
                    metrics = gr.JSON()
            with gr.Tab("Use the token", id="use"):
                with gr.Row():
                    use_run = gr.Dropdown(runs, value=runs[0] if runs else None, label="token", **typed, scale=2)
                    prompt = gr.Textbox(label=f"prompt ({TOKEN_WORD} = the token)", scale=3)
                    use_seed = gr.Number(0, precision=0, label="first seed")
                    n_images = gr.Number(min(4, lim.max_images), precision=0, label=f"images (1..{lim.max_images})")
                    gen_btn = gr.Button("Generate", variant="primary")
                use_gallery = gr.Gallery(label="images", columns=8, fit_columns=False, **gallery)
                token_file = gr.File(
                    label="learned_embeds.safetensors (any diffusers pipeline: load_textual_inversion)"
                )
            with gr.Tab("Results", id="results") as results_tab:
                gr.Markdown(f"The output folder `{jobs.out}`: results.csv, and each token's grid and log.")
                refresh_btn = gr.Button("Refresh")
                table = gr.Dataframe(label="results.csv", interactive=False)
                with gr.Row():
                    res_run = gr.Dropdown(runs, value=runs[0] if runs else None, label="token folder", **typed, scale=3)
                    open_btn = gr.Button("Open")
                    use_btn = gr.Button("Load into Compare and Use")
                res_text = gr.Markdown()
                res_grid = gr.Image(label="grid.png (baseline over token)", type="filepath")
                res_log = gr.Dataframe(
                    headers=["epoch", "loss", "accuracy", "grad_norm"], label="train_log.jsonl", max_height=250
                )
                res_files = gr.File(label="files", file_count="multiple")
                dl_path = gr.Textbox(visible=False)
                dl_file = gr.File(visible=False)

        compared = [base_gallery, token_gallery, summary, metrics]
        cmp_btn.click(compare, [cmp_run, cmp_seeds], compared, api_name="compare", **model)
        train_ev = train_btn.click(
            train, [cls, epochs, lr, seed, grad_steps], [status, epoch_images, log, trained], api_name="train", **model
        )
        stop_btn.click(stop, None, status, api_name="stop", queue=False)
        # In the page, a finished training goes straight on to its comparison.
        train_ev.success(pick_token, trained, [cmp_run, use_run, tabs], **private).then(
            compare, [cmp_run, cmp_seeds], compared, api_name="compare_trained", api_visibility="private", **model
        )
        gen_btn.click(
            generate, [use_run, prompt, use_seed, n_images], [use_gallery, token_file], api_name="generate", **model
        )
        use_run.change(token_picked, use_run, [prompt, token_file], **private)
        opened = [res_grid, res_log, res_text, res_files]
        open_btn.click(open_run, res_run, opened, api_name="open_run", queue=False)
        res_run.input(show_run, res_run, opened, **private)
        for event in (refresh_btn.click, results_tab.select, demo.load):  # the Results tab, up to date
            event(show_results, res_run, [table, res_run], **private).then(show_run, res_run, opened, **private)
        use_btn.click(pick_token, res_run, [cmp_run, use_run, tabs], **private)
        dl_path.submit(download, dl_path, dl_file, api_name="download", queue=False)
        demo.load(token_picked, use_run, [prompt, token_file], **private)

        def results() -> dict:
            """results.csv (headers, rows) and the trained tokens ('<class dir>/<exp_id>')."""
            headers, rows = jobs.results()
            return dict(headers=headers, rows=rows, tokens=jobs.runs())

        def classes() -> list[str]:
            """The classifier's classes, '2: stick' (1-based index: name)."""
            return jobs.class_choices()

        gr.api(results, api_name="results", queue=False)
        gr.api(classes, api_name="classes", queue=False)
    return demo


def main(argv: list[str] | None = None) -> int:
    try:
        # DISCO_ARGS: flags for a host that starts `python app.py` without any (a Space's variables).
        args, cfg = parse_app_args(
            shlex.split(os.environ.get("DISCO_ARGS", "")) + (sys.argv[1:] if argv is None else argv)
        )
        limits = Limits(args.max_epochs, args.max_seeds, args.max_images)
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline, and nothing phones home
        import gradio as gr

        jobs = Jobs(cfg, limits)
    except UsageError as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 2
    demo = build_ui(jobs)
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue)
    # System fonts: the default theme would fetch web fonts, which an offline page waits for.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[str(jobs.out)],
        theme=theme,
        footer_links=["api"],
        max_file_size="1mb",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
