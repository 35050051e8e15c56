"""The web demo's event handlers: each turns a page event (or API call) into a job of demo.jobs and
its result into what the page shows. Messages are one line, never a stack trace or a server path."""

import copy
import functools
import inspect
import os
import re
import threading
import traceback
from pathlib import Path

import gradio as gr

from demo.inputs import TOKEN_WORD, class_choices
from report import learned_text
from utils import UsageError, to_pil, view_scale

REPO = Path(__file__).resolve().parents[1]
HIDDEN_PATHS: list[str] = [str(REPO)]  # + the output folder (Handlers)
LOG_HEADERS = ["epoch", "loss", "accuracy", "grad_norm"]


def scrub(message: str) -> str:
    """A message without the server's own folders in it."""
    for path in sorted(HIDDEN_PATHS, key=len, reverse=True):
        message = message.replace(path + os.sep, "").replace(path, "…")
    return message


def page_errors(fn):
    """Bad input becomes a one-line message in the page (and the API's error), never a stack trace;
    the server keeps running. Unexpected failures go to the server log, the page names only their type."""

    def convert(e: Exception) -> Exception:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, UsageError):
            return gr.Error(scrub(str(e)), print_exception=False)
        traceback.print_exc()
        return gr.Error(f"internal error ({type(e).__name__}); the server log has the details", print_exception=False)

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


# ---------------------------------------------------------------- what the page shows
def one_based(text: str) -> str:
    """train.py's summaries count epochs from 0 (as train_log.jsonl); the page counts from 1."""
    return re.sub(r"\bepoch (\d+)", lambda m: f"epoch {int(m[1]) + 1}", text)


CURVES = ("loss", "accuracy")


def curves(log: list[dict]) -> tuple[dict, ...]:
    """The loss and the accuracy per epoch (1-based), each for a gr.LinePlot in Gradio's own plot
    format (no pandas)."""
    return tuple(curve(log, k) for k in CURVES)


def curve(log: list[dict], key: str) -> dict:
    data = [[e["epoch"] + 1, round(e.get(key) or 0, 4)] for e in log]
    types = {"epoch": "quantitative", key: "quantitative"}
    return dict(columns=["epoch", key], data=data, datatypes=types, mark="line")


def log_rows(log: list[dict]) -> list[list]:
    return [[e["epoch"] + 1, *(round(e.get(k) or 0, 4) for k in LOG_HEADERS[1:])] for e in log]


def summary_text(s: dict, planned=None) -> str:
    """'3 of 30 epochs in 5 s; stop: ...; kept the token after epoch 3's update (...)' (1-based)."""
    stop = "all epochs ran" if s.get("stop") == "num_train_epochs" else s.get("stop")
    of = f" of {planned}" if planned else ""
    text = f"{s.get('epochs')}{of} epochs in {float(s.get('seconds') or 0):.0f} s; stop: {stop}; " + one_based(
        f"kept {s.get('kept_token')}"
    )
    if "learned" not in s:
        return text
    return text + "; " + learned_text(s["learned"]).replace("try --candidates 3 or another --seed", "try another seed")


def accuracy_lines(m: dict) -> list[str]:
    lines = []
    for role in ("classifier", "eval_classifier"):
        acc = m.get(role, {})
        if "token_accuracy" in acc:
            line = f"baseline {acc['baseline_accuracy']:.0%} → token {acc['token_accuracy']:.0%}"
            lines.append(f"**{role}** ({short(acc.get('name', ''))}): {line}")
    return lines


def short(model: str) -> str:
    """A model as messages show it, never a server path: a local folder relative to the repository
    (digits/classifier), else by its last two names; a hub id as it is."""
    path = Path(model).expanduser()
    if not (path.is_absolute() or model.startswith((".", "~")) or path.is_dir()):
        return model  # a hub id ("org/name") or a classifier preset ("inet")
    path = path.resolve()
    if path.is_relative_to(REPO):
        return path.relative_to(REPO).as_posix()
    return "/".join(path.parts[1:][-2:])


def shown_metrics(m: dict) -> dict:
    """metrics.json as the page and the API show it: its model folders named by short()."""
    m = copy.deepcopy(m)
    if "sd_model" in m.get("settings", {}):
        m["settings"]["sd_model"] = short(m["settings"]["sd_model"])
    for role in ("classifier", "eval_classifier"):
        if "name" in m.get(role, {}):
            m[role]["name"] = short(m[role]["name"])
    return m


def view(image):
    """A PIL image large enough to see (the digits world is 16 px; nearest keeps it sharp)."""
    from PIL import Image

    im = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else to_pil(image)
    s = view_scale(min(im.size))
    return im.resize((im.width * s, im.height * s), Image.NEAREST) if s > 1 else im


class Handlers:
    """The page's events over one Jobs (models, output folder); `stops` holds each visitor's
    running training, so that Stop ends only the asking visitor's own."""

    def __init__(self, jobs):
        self.jobs, self.store, self.labels = jobs, jobs.store, jobs.labels
        self.stops: dict[str, threading.Event] = {}
        HIDDEN_PATHS.append(str(self.store.out))

    def captioned(self, images, preds, target) -> list:
        mark = lambda p: "✓" if p == target else "✗"  # noqa: E731
        return [(view(im), f"{mark(p)} {p + 1}: {self.labels[p]}") for im, p in zip(images, preds)]

    # ------------------------------------------------------------ training
    def train(self, class_choice, epochs, lr, seed, grad_steps, request: gr.Request):
        """Yields (status, this epoch's images, loss and accuracy curves, log rows, trained token) after
        every epoch."""
        stop = threading.Event()
        self.stops[request.session_hash] = stop
        log, shown = [], None
        try:
            for ev in self.jobs.train(class_choice, epochs, lr, seed, grad_steps, stop):
                if "summary" in ev:
                    done = f"done: {summary_text(ev['summary'], ev['epochs'])}"
                    yield done, shown, *curves(log), log_rows(log), ev["run"]
                    return
                log.append(e := ev["entry"])
                shown = self.captioned(ev["images"], e["predictions"], ev["target"])
                status = f"epoch {e['epoch'] + 1} of {ev['epochs']}: loss {e['loss']:.3f}, accuracy {e['accuracy']:.0%}"
                yield status, shown, *curves(log), log_rows(log), gr.update()
        finally:
            if self.stops.get(request.session_hash) is stop:
                del self.stops[request.session_hash]

    def stop(self, request: gr.Request) -> str:
        """Only the asking visitor's own training stops."""
        if request.session_hash not in self.stops:
            return "no training of yours to stop"
        self.stops.pop(request.session_hash).set()
        return "stopping after this epoch; the best token so far is kept"

    # ------------------------------------------------------------ comparison and use
    def compare(self, run, seeds):
        """Both prompts' images, captioned, the accuracies, metrics.json."""
        r = self.jobs.compare(run, seeds)
        m, t = r["metrics"], r["target"]
        prompts, s = self.prompts(m), m["seeds"]
        seeds_line = f"{len(s)} seeds ({s[0]}..{s[-1]}); prompts: “{prompts['baseline']}” vs “{prompts['token']}”"
        shown = [self.captioned(*r["shown"][k], t) for k in ("baseline", "token")]
        return *shown, "\n\n".join([*accuracy_lines(m), seeds_line]), shown_metrics(m)

    def prompts(self, metrics: dict) -> dict:
        """The compared prompts as the page writes them (S_c for the tokenizer's word)."""
        return {k: p.replace(self.jobs.cfg.placeholder_token, TOKEN_WORD) for k, p in metrics["prompts"].items()}

    def gallery_labels(self, metrics):
        """Each comparison gallery labelled with its prompt, the real class name in it."""
        if not metrics or "prompts" not in metrics:
            return gr.update(), gr.update()
        prompts = self.prompts(metrics)
        return gr.Gallery(label=prompts["baseline"]), gr.Gallery(label=prompts["token"])

    def generate(self, run, prompt, seed, images):
        r = self.jobs.generate(run, prompt, seed, images)
        return self.captioned(r["images"], r["preds"], r["target"]), str(r["token"])

    def token_picked(self, run):
        """Use tab: a prompt with S_c for the picked token, and its file to download."""
        try:
            c, paths = self.store.run_paths(run)
        except UsageError:
            return gr.update(), None
        return f"a photo of {TOKEN_WORD} {self.labels[c]}", str(paths.token)

    # ------------------------------------------------------------ the output folder
    def token_lists(self, *current):
        """The trained tokens now in the output folder, for each token list of the page (Compare, Use,
        Results): read at every page load, so a new visitor sees tokens trained after the start."""
        names = self.store.runs()
        pick = lambda v: v if v in names else names[0] if names else None  # noqa: E731
        return tuple(gr.Dropdown(choices=names, value=pick(v)) for v in current)

    def pick_token(self, run):
        """After a training (or from Results): that token in Compare and Use, the page on Compare."""
        names = self.store.runs()
        return gr.Dropdown(choices=names, value=run), gr.Dropdown(choices=names, value=run), gr.Tabs(selected="compare")

    def show_results(self):
        headers, rows = self.store.results()
        return dict(headers=headers, data=rows)

    def open_run(self, run):
        """Results tab: a run's grid, loss and accuracy curves, log, summary and files."""
        r = self.store.open_run(run)
        text = summary_text(r["summary"]) if r["summary"] else "no train_summary.json"
        text = "\n\n".join([text, *accuracy_lines(r["metrics"])])
        grid = str(r["grid"]) if r["grid"] else None
        return grid, *curves(r["log"]), log_rows(r["log"]), text, [str(f) for f in r["files"]]

    def show_run(self, run):
        if not run:
            return None, *curves([]), [], "no trained token in the output folder yet", []
        return self.open_run(run)

    def download(self, path) -> str:
        return str(self.store.file(path))

    def api_results(self) -> dict:
        """results.csv (headers, rows) and the trained tokens ('<class dir>/<exp_id>')."""
        headers, rows = self.store.results()
        return dict(headers=headers, rows=rows, tokens=self.store.runs())

    def api_classes(self) -> list[str]:
        """The classifier's classes, '2: stick' (1-based index: name)."""
        return class_choices(self.labels)
