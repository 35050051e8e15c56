"""What the web demo (app.py) does, without the web: the models loaded once, the requests checked
against the server's limits, training, comparison and generation through the project's own
train_class / evaluate_class / generate, and the output folder read only inside itself.

No gradio here: app.py turns these functions into the page and its API endpoints."""

import csv
import dataclasses
import json
import math
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from config import RunConfig
from report import write_summary
from utils import UsageError, class_dir_name, remove_stale_tmp, to_pil, view_scale
from workspace import ClassPaths, device_and_dtype, load_classifiers, load_diffusion, quiet_libraries, train_and_record

TOKEN_WORD = "S_c"  # what a user types for the trained token in a free prompt


@dataclass
class Limits:
    """Bounds of one request, fixed when the server starts (app.py's --max_* flags)."""

    max_epochs: int = 100  # training epochs per request
    max_seeds: int = 32  # seeds per comparison
    max_images: int = 8  # images per generation request
    max_prompt: int = 300  # characters of a free prompt


class Jobs:
    """The server's models and output folder. One job at a time uses the models (`lock`);
    app.py's queue already serialises requests, the lock also covers a training thread that
    is still finishing its epoch after its page was closed."""

    def __init__(self, cfg: RunConfig, limits: Limits):
        from accelerate import PartialState

        quiet_libraries()
        self.cfg, self.limits = cfg, limits
        state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
        self.device, dtype = device_and_dtype(cfg, state)
        self.classifiers = load_classifiers(cfg)  # as run.py: same checks, one loader
        self.labels = self.classifiers["classifier"].labels
        self.sd = load_diffusion(cfg, self.classifiers, self.device, dtype)
        self.out = Path(cfg.output_path).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    # ------------------------------------------------------------ input checks
    def class_choices(self) -> list[str]:
        """'2: stick': the 1-based index (as run.py's --class_index) keeps repeated names apart."""
        return [f"{i + 1}: {name}" for i, name in enumerate(self.labels)]

    def parse_class(self, text) -> int:
        """'2: stick', '2' or 'stick' -> the 0-based class index."""
        text = str(text or "").strip()
        m = re.fullmatch(r"(\d+)\s*(?::.*)?", text)
        if m:
            i = int(m[1])
            if not 1 <= i <= len(self.labels):
                raise UsageError(f"class {i}: out of range; the classifier's classes are 1..{len(self.labels)}")
            return i - 1
        hits = [i for i, n in enumerate(self.labels) if n.lower() == text.lower()]
        if not hits:
            raise UsageError(f"class {text!r}: not a class of the classifier (pick one from the list)")
        if len(hits) > 1:
            raise UsageError(f"class {text!r} is ambiguous: pick {' or '.join(f'{i + 1}: {text}' for i in hits)}")
        return hits[0]

    @staticmethod
    def whole(value, what: str, lo: int, hi: int, why: str = "") -> int:
        """An integer request parameter in lo..hi, or one line saying what is allowed."""
        ok = isinstance(value, (int, float)) and math.isfinite(value) and value == int(value)
        if not ok or not lo <= int(value) <= hi:
            raise UsageError(f"{what} {value!r}: must be a whole number in {lo}..{hi}{why}")
        return int(value)

    def train_config(self, c: int, epochs, lr, seed, grad_steps) -> RunConfig:
        lim = self.limits
        epochs = self.whole(epochs, "epochs", 1, lim.max_epochs, " (the server's --max_epochs)")
        steps = self.cfg.num_of_SD_inference_steps
        grad_steps = self.whole(grad_steps, "grad_steps", 1, steps, " (the sampler's steps)")
        seed = self.whole(seed, "seed", 0, 2**32 - 1)
        if not isinstance(lr, (int, float)) or not (math.isfinite(lr) and 0 < lr <= 10):
            raise UsageError(f"lr {lr!r}: must be a number above 0 (and at most 10)")
        new = dict(num_train_epochs=epochs, lr=float(lr), seed=seed, grad_steps=grad_steps)
        return dataclasses.replace(self.cfg, class_index=str(c + 1), class_name="", **new).finalize()

    def inside(self, rel, base: Path | None = None) -> Path:
        """`rel` resolved inside `base` (the output folder), else refused: no absolute paths,
        no '..' or symbolic link leading out of it."""
        base = (base or self.out).resolve()
        rel = str(rel or "").strip()
        if not rel or "\0" in rel or Path(rel).is_absolute():
            raise UsageError(f"{rel!r}: give a path relative to the output folder")
        p = (base / rel).resolve()
        if not p.is_relative_to(base):
            raise UsageError(f"{rel!r}: outside the output folder; refused")
        return p

    def run_paths(self, run) -> tuple[int, ClassPaths]:
        """A trained token named as the Results tab lists it, '<class dir>/<exp_id>' (e.g.
        '2_stick/default'), -> its class and run.py's paths for it."""
        token_dir = self.inside(run, self.out / "pipeline_token")
        rel = token_dir.relative_to((self.out / "pipeline_token").resolve()).parts
        m = re.fullmatch(r"(\d+)_.*", rel[0]) if len(rel) == 2 else None
        c = int(m[1]) - 1 if m else -1
        if not 0 <= c < len(self.labels) or class_dir_name(c, self.labels[c]) != rel[0]:
            raise UsageError(f"{run!r}: not a token folder '<class dir>/<exp_id>' of this classifier's classes")
        paths = ClassPaths(rel[0], token_dir, self.out / "img" / rel[0] / rel[1])
        if not paths.token.is_file():
            raise UsageError(f"{run!r}: no trained token there (train the class first)")
        return c, paths

    def run_name(self, paths: ClassPaths) -> str:
        return f"{paths.dir_name}/{paths.token_dir.name}"

    # ------------------------------------------------------------ jobs
    def train(self, class_text, epochs, lr, seed, grad_steps, stop: threading.Event) -> Iterator[dict]:
        """train_class in a thread; yields {"entry", "images"} after every epoch and finally
        {"summary", "run"}. `stop` set (the Stop button, or the page closed) ends training after
        the current epoch with the best token so far."""
        c = self.parse_class(class_text)
        cfg = self.train_config(c, epochs, lr, seed, grad_steps)
        name, paths = self.labels[c], ClassPaths.of(cfg, c, self.labels[c])
        events = queue.Queue()

        def on_epoch(entry, images):
            events.put(dict(entry=entry, images=images))
            return stop.is_set()

        def work():
            try:
                with self.lock:
                    remove_stale_tmp(paths.token_dir, paths.img_dir)
                    paths.metrics.unlink(missing_ok=True)  # it described the previous token
                    clf = self.classifiers["classifier"]
                    summary = train_and_record(cfg, self.sd, clf, c, name, paths, 0, on_epoch)
                    write_summary(cfg, [c], self.labels)
                events.put(dict(summary=summary, run=self.run_name(paths)))
            except BaseException as e:  # handed to the request that started it
                events.put(dict(error=e))

        threading.Thread(target=work, name=f"train {paths.dir_name}", daemon=True).start()
        try:
            while True:
                event = events.get()
                if "error" in event:
                    raise event["error"]
                yield event
                if "summary" in event:
                    return
        finally:
            stop.set()  # the request ended (done, failed or closed): a running training stops too

    def compare(self, run, seeds) -> dict:
        """evaluate_class on `seeds` evaluation seeds: metrics, and per kind (baseline, token) the
        images with their predicted classes."""
        from evaluate import evaluate_class

        n = self.whole(seeds, "seeds", 1, self.limits.max_seeds, " (the server's --max_seeds)")
        c, paths = self.run_paths(run)
        cfg = dataclasses.replace(self.cfg, test_size=n, exp_id=paths.token_dir.name)
        with self.lock:
            m = evaluate_class(cfg, self.sd, self.classifiers, c, self.labels[c], paths)
            write_summary(cfg, [c], self.labels)
        shown = {}
        for kind in ("baseline", "token"):
            preds = m["classifier"][f"{kind}_predictions"]
            files = [
                paths.img_dir / "eval" / kind / f"seed{s:05d}_{p}_{self.labels[p]}.png"
                for s, p in zip(m["seeds"], preds)
            ]
            shown[kind] = (files, preds)
        return dict(metrics=m, shown=shown, target=c)

    def generate(self, run, prompt, seed, images) -> dict:
        """Images of a free prompt in which 'S_c' stands for the trained token."""
        from diffusion import generate, set_token
        from evaluate import classify
        from train import load_token

        n = self.whole(images, "images", 1, self.limits.max_images, " (the server's --max_images)")
        seed = self.whole(seed, "seed", 0, 2**32 - n)
        prompt = str(prompt or "").strip()
        if not prompt or len(prompt) > self.limits.max_prompt:
            raise UsageError(f"prompt: must be 1..{self.limits.max_prompt} characters")
        c, paths = self.run_paths(run)
        text = prompt.replace(TOKEN_WORD, self.cfg.placeholder_token)
        cfg, seeds = self.cfg, list(range(seed, seed + n))
        with self.lock:
            set_token(self.sd, load_token(paths.token, cfg.placeholder_token))
            out = generate(self.sd, text, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
            preds = classify(self.classifiers["classifier"], out, cfg.eval_batch_size, self.device)
        return dict(images=out, preds=preds, seeds=seeds, prompt=text, token=paths.token, target=c)

    # ------------------------------------------------------------ the output folder
    def runs(self) -> list[str]:
        """Every trained token in the output folder, as '<class dir>/<exp_id>', by class index."""
        found = (self.out / "pipeline_token").glob("*/*/learned_embeds.safetensors")
        names = [f"{p.parts[-3]}/{p.parts[-2]}" for p in found]
        return sorted(names, key=lambda r: (int(m[1]) if (m := re.match(r"(\d+)_", r)) else 0, r))

    def default_run(self, c: int) -> str:
        return self.run_name(ClassPaths.of(self.cfg, c, self.labels[c]))

    def results(self) -> tuple[list[str], list[list]]:
        """results.csv as (headers, rows); the token path is shown as its run name."""
        path = self.out / "results.csv"
        if not path.is_file():
            return ["class_index", "class_name", "exp_id"], []
        rows = list(csv.DictReader(path.open()))
        headers = [h for h in (rows[0].keys() if rows else []) if h != "token_path"]
        return headers, [[r[h] for h in headers] for r in rows]

    def open_run(self, run) -> dict:
        """One run's grid, train log, summary and files."""
        c, paths = self.run_paths(run)
        log = [json.loads(line) for line in paths.log.read_text().splitlines()] if paths.log.is_file() else []
        read = lambda p: json.loads(p.read_text()) if p.is_file() else {}  # noqa: E731
        files = [paths.token, paths.config, paths.log, paths.train_summary, paths.metrics, paths.img_dir / "grid.png"]
        return dict(
            target=c,
            grid=paths.img_dir / "grid.png" if (paths.img_dir / "grid.png").is_file() else None,
            log=log,
            summary=read(paths.train_summary),
            metrics=read(paths.metrics),
            files=[f for f in files if f.is_file()],
        )

    def file(self, rel) -> Path:
        p = self.inside(rel)
        if not p.is_file():
            raise UsageError(f"{rel!r}: no such file in the output folder")
        return p

    # ------------------------------------------------------------ display helpers
    def caption(self, pred: int, target: int) -> str:
        return f"{'✓' if pred == target else '✗'} {pred + 1}: {self.labels[pred]}"

    def view(self, image) -> "object":
        """A PIL image large enough to see (the digits world is 16 px; nearest keeps it sharp)."""
        from PIL import Image

        im = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else to_pil(image)
        s = view_scale(min(im.size))
        return im.resize((im.width * s, im.height * s), Image.NEAREST) if s > 1 else im
