"""The web demo: train a DisCo token in the browser, compare it with the plain prompt, use it.

python demo/app.py                                   # the digits world on http://127.0.0.1:7860
python demo/app.py --sd_model CompVis/stable-diffusion-v1-4 --classifier inet --host 0.0.0.0   # SD 1.4, GPU

Model flags are run.py's (config.py, one parser), less those the page decides (NOT_SERVER_FLAGS,
refused by name); the server's own flags are below. Every action is an API endpoint (/train, /stop,
/compare, /generate, /results, /open_run, /download, /classes) for gradio_client (docs/demo.md).
This file starts the server; the page is demo/page.py, its events demo/handlers.py, the work
demo/jobs.py, the output folder demo/store.py, the input checks demo/inputs.py.
"""

import argparse
import errno
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
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
# run.py's flags that the demo would take and ignore: the page, not the server, decides these.
PAGE_DECIDES = "the demo picks the class on the page"
NOT_SERVER_FLAGS = {
    "class_index": PAGE_DECIDES,
    "class_name": PAGE_DECIDES,
    "train": "the page's buttons choose what runs",
    "evaluate": "the page's buttons choose what runs",
    "generate": "the Use tab generates images",
    "exp_id": "every training names a run folder of its own",
    "skip_exists": "every training names a run folder of its own",
    "candidates": "the page trains one token per request",
    "retry_below": "the page trains one token per request",
    "class_batch": "the page trains one class per request",
    "save_as_full_pipeline": "the page saves tokens only",
}
TEMP_PREFIX = ".tmp-"  # the server's temporary files, Gradio's cache among them, in the output folder


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as run.py
        raise UsageError(message)


def server_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = _Parser(prog="app.py", add_help=False, allow_abbrev=False, description="DisCo web demo.", formatter_class=fmt)
    p.add_argument("-h", "--help", action="store_true", help="this help, then run.py's flags")
    # Gradio's own variables (a Hugging Face Space sets them) stand in for --host and --port; a text
    # default goes through `type` as a typed value does, so a bad variable is one line too.
    host, port = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), os.environ.get("GRADIO_SERVER_PORT", "7860")
    p.add_argument("--host", default=host, help="address to listen on; 0.0.0.0 opens it to the network")
    p.add_argument("--port", type=int, default=port, help="port")
    p.add_argument("--share", action="store_true", help="also open a temporary public *.gradio.live link")
    p.add_argument("--max_epochs", type=int, default=Limits.max_epochs, help="most epochs per training request")
    p.add_argument("--max_seeds", type=int, default=Limits.max_seeds, help="most seeds per comparison")
    p.add_argument("--max_images", type=int, default=Limits.max_images, help="most images per generation")
    p.add_argument("--max_queue", type=int, default=16, help="most requests waiting; more are turned away")
    return p


def print_help() -> None:
    print(server_parser().format_help() + "\nrun.py's flags (models, output, training defaults):\n")
    run_flags = build_parser()
    for action in run_flags._actions:  # the flags the demo refuses are not offered
        if action.dest in NOT_SERVER_FLAGS:
            action.help = argparse.SUPPRESS
    print(run_flags.format_help().split("\n\n", 1)[1])
    print("Not server flags (the page decides): " + ", ".join(f"--{f}" for f in NOT_SERVER_FLAGS))


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str], str]:
    """The server's flags, checked; the run flags for config.parse_args (with --preset digits when no
    model flag is given and the demo's own output folder) and that folder. Creates nothing."""
    args, rest = server_parser().parse_known_args(argv)
    if args.help:
        print_help()
        sys.exit(0)
    for flag in ("max_epochs", "max_seeds", "max_images", "max_queue"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} {getattr(args, flag)}: must be a positive integer")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be a port number in 1..65535")
    given = vars(build_parser().parse_args(rest))  # the run.py flags given (abbreviations resolved)
    refused = [flag for flag in NOT_SERVER_FLAGS if flag in given]
    if refused:
        raise UsageError(f"--{refused[0]}: {NOT_SERVER_FLAGS[refused[0]]}; not a server flag")
    if not given.keys() & set(MODEL_FLAGS):
        given["preset"], rest = "digits", ["--preset", "digits", *rest]
    if "output_path" not in given:
        rest += ["--output_path", DEFAULT_OUTPUT]
    if given.get("preset") == "digits" and "num_train_epochs" not in given:
        rest += ["--num_train_epochs", str(DIGITS_EPOCHS)]
    return args, rest, given.get("output_path", DEFAULT_OUTPUT)


def parse_app_args(argv: list[str]) -> tuple[argparse.Namespace, RunConfig]:
    """The server's flags, then everything else through run.py's own parser (config.parse_args, which
    creates the output folder)."""
    args, rest, _ = split_args(argv)
    return args, run_config(rest)


def run_config(rest: list[str]) -> RunConfig:
    """The run flags through run.py's parser; one token per request, whatever a preset asks (NOT_SERVER_FLAGS)."""
    return parse_args([*rest, "--candidates", "1"])  # --candidates 1 also drops a preset's --retry_below


def check_address(host: str, port: int) -> None:
    """Refuse a port already taken (or a host this machine cannot listen on) before anything is created
    or loaded; Gradio would fail only after the models, with a traceback."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            s.bind(address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"--port {port}: already in use on {host}; pick another") from None
        reason = e.strerror or type(e).__name__
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({reason})") from None


def new_folders(path: str) -> list[Path]:
    """The folders of `path` that do not exist yet, deepest first: a refused start removes them again."""
    p, missing = Path(path).absolute(), []
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): kept
            return


def private_temp(out: str) -> Path:
    """A temporary folder of the server's own inside the output folder, for every temporary file of
    the process: Gradio's cache of the images it serves and of uploads, and any library's. The output
    folder is made here, once every check has passed (a refused start removes it again if still empty)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=Path(out).resolve()))
    os.environ["GRADIO_TEMP_DIR"] = os.environ["TMPDIR"] = str(temp)  # read by gradio at import
    tempfile.tempdir = str(temp)
    return temp


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the server as Ctrl-C does: Gradio closes, the cache goes


def main(argv: list[str] | None = None) -> int:
    # DISCO_ARGS: flags for a host that starts `python demo/app.py` without any (a Space's variables).
    argv = shlex.split(os.environ.get("DISCO_ARGS", "")) + (sys.argv[1:] if argv is None else argv)
    made, temp, code = [], None, 0
    try:
        args, rest, out = split_args(argv)
        check_address(args.host, args.port)
        made = new_folders(out)
        cfg = run_config(rest)
        temp = private_temp(cfg.output_path)
        from demo.jobs import Jobs

        serve(Jobs(cfg, Limits(args.max_epochs, args.max_seeds, args.max_images)), args)
    except UsageError as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    if code == 2:
        remove_empty(made)  # a refused start leaves nothing: only what it created, and only if empty
    return code


def serve(jobs, args: argparse.Namespace) -> None:
    """The page on host:port until Ctrl-C or SIGTERM."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline, and nothing phones home
    import gradio as gr

    from demo.page import build_ui

    demo = build_ui(jobs)
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue)
    # System fonts: the default theme would fetch web fonts, which an offline page waits for.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            allowed_paths=[str(jobs.store.out)],
            theme=theme,
            footer_links=["api"],
            max_file_size="1mb",
        )
    except OSError as e:  # the port taken since the check
        raise UsageError(f"--port {args.port}: cannot listen on {args.host} ({e})") from None


if __name__ == "__main__":
    sys.exit(main())
