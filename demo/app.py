"""The web demo: train a DisCo token in the browser, compare it with the plain prompt, use it.

python demo/app.py                                   # the digits world on http://127.0.0.1:7860
python demo/app.py --sd_model CompVis/stable-diffusion-v1-4 --classifier inet --host 0.0.0.0   # SD 1.4, GPU

Model flags are run.py's (config.py, one parser); the server's own flags are below. Every
action is an API endpoint (/train, /stop, /compare, /generate, /results, /open_run, /download, /classes)
for gradio_client (docs/demo.md). This file starts the server; the page is demo/page.py, its events
demo/handlers.py, the work demo/jobs.py, the output folder demo/store.py, the input checks demo/inputs.py.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python demo/app.py` from anywhere

from config import RunConfig, build_parser, parse_args  # noqa: E402
from demo.inputs import Limits  # noqa: E402
from utils import UsageError  # noqa: E402

# Without a model flag the demo opens on the shipped digits world: it works offline on a CPU.
MODEL_FLAGS = ("preset", "sd_model", "sd_2_1", "classifier", "eval_classifier")
DEFAULT_OUTPUT = "out/demo"  # not the repository root: Gradio may serve every file in this folder
# The page's default epochs on the digits world, fewer than the preset's (config.PRESETS) so that a
# training plus comparison stays near a minute on a 2-core CPU; --num_train_epochs or the page sets more.
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


def main(argv: list[str] | None = None) -> int:
    try:
        # DISCO_ARGS: flags for a host that starts `python demo/app.py` without any (a Space's variables).
        args, cfg = parse_app_args(
            shlex.split(os.environ.get("DISCO_ARGS", "")) + (sys.argv[1:] if argv is None else argv)
        )
        limits = Limits(args.max_epochs, args.max_seeds, args.max_images)
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline, and nothing phones home
        import gradio as gr

        from demo.jobs import Jobs
        from demo.page import build_ui

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
        allowed_paths=[str(jobs.store.out)],
        theme=theme,
        footer_links=["api"],
        max_file_size="1mb",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
