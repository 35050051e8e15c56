"""The web demo's work, without the web: the models loaded once, and training, comparison and
generation through the project's own train_and_record / evaluate_class / generate, one job at a time.
Requests are checked by demo.inputs, paths by demo.store. No gradio here."""

import dataclasses
import queue
import threading
from collections.abc import Iterator

import torch

from config import RunConfig
from demo.inputs import Limits, parse_class, prompt_text, train_settings, whole
from report import write_summary
from workspace import device_and_dtype, load_classifiers, load_diffusion, quiet_libraries, train_and_record


class Jobs:
    """The server's models and output folder. One job at a time uses the models (`lock`): the page's
    queue already serialises requests; the lock also covers a training thread that is still finishing
    its epoch after its page was closed."""

    def __init__(self, cfg: RunConfig, limits: Limits):
        from accelerate import PartialState

        from demo.store import Store

        quiet_libraries()
        self.limits = limits
        state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
        self.device, dtype = device_and_dtype(cfg, state)
        self.classifiers = load_classifiers(cfg)  # as run.py: same checks, one loader
        self.labels = self.classifiers["classifier"].labels
        self.store = Store(cfg.output_path, self.labels)
        self.cfg = dataclasses.replace(cfg, output_path=str(self.store.out))
        self.sd = load_diffusion(cfg, self.classifiers, self.device, dtype)
        self.lock = threading.Lock()

    def train(self, class_text, epochs, lr, seed, grad_steps, stop: threading.Event) -> Iterator[dict]:
        """train_and_record in a thread, in a run folder of its own; yields {"entry", "images"} after every
        epoch and finally {"summary", "run"}, each with the class ("target") and the planned "epochs".
        `stop` set (the Stop button, or the page closed) ends training after the current epoch with
        the best token so far."""
        c = parse_class(self.cfg, self.labels, class_text)
        settings = train_settings(self.cfg, self.limits, epochs, lr, seed, grad_steps)
        cfg = dataclasses.replace(self.cfg, class_index=str(c + 1), class_name="", **settings).finalize()
        cfg, paths = self.store.new_run(cfg, c)
        events, about = queue.Queue(), dict(target=c, epochs=cfg.num_train_epochs)

        def on_epoch(entry, images):
            events.put(dict(entry=entry, images=images, **about))
            return stop.is_set()

        def work():
            try:
                with self.lock:
                    clf = self.classifiers["classifier"]
                    summary = train_and_record(cfg, self.sd, clf, c, self.labels[c], paths, 0, on_epoch)
                    write_summary(cfg, [c], self.labels)
                events.put(dict(summary=summary, run=self.store.run_name(paths), **about))
            except BaseException as e:  # handed to the request that started it
                events.put(dict(error=e))

        threading.Thread(target=work, name=f"train {paths.dir_name}", daemon=True).start()
        try:
            while "summary" not in (event := events.get()):
                if "error" in event:
                    raise event["error"]
                yield event
            yield event
        finally:
            stop.set()  # the request ended (done, failed or closed): a running training stops too

    def compare(self, run, seeds) -> dict:
        """evaluate_class on `seeds` evaluation seeds: its metrics, and per prompt (baseline, token)
        the image files with the classifier's predictions."""
        from evaluate import evaluate_class

        n = whole(seeds, "seeds", 1, self.limits.max_seeds, " (the server's --max_seeds)")
        c, paths = self.store.run_paths(run)
        cfg = dataclasses.replace(self.cfg, test_size=n, exp_id=paths.token_dir.name)
        with self.lock:
            m = evaluate_class(cfg, self.sd, self.classifiers, c, self.labels[c], paths)
            write_summary(cfg, [c], self.labels)
        shown = {}
        for kind in ("baseline", "token"):
            files = [paths.img_dir / f for f in m["images"][kind]]
            self.store.check_inside(*files)
            shown[kind] = (files, m["classifier"][f"{kind}_predictions"])
        return dict(metrics=m, shown=shown, target=c)

    def generate(self, run, prompt, seed, images) -> dict:
        """Images of a free prompt in which 'S_c' stands for the trained token."""
        from diffusion import generate, set_token
        from evaluate import classify
        from tokens import load_token

        cfg = self.cfg
        n = whole(images, "images", 1, self.limits.max_images, " (the server's --max_images)")
        first = whole(seed, "seed", 0, 2**32 - n)
        text = prompt_text(prompt, cfg.placeholder_token, self.limits.max_prompt)
        c, paths = self.store.run_paths(run)
        seeds = list(range(first, first + n))
        with self.lock:
            set_token(self.sd, load_token(paths.token, self.sd, cfg.placeholder_token))
            out = generate(self.sd, text, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
            preds = classify(self.classifiers["classifier"], out, cfg.eval_batch_size, self.device)
        return dict(images=out, preds=preds, seeds=seeds, token=paths.token, target=c)
