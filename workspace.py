"""What a run is made of, shared by run.py, the web demo and the benchmark: where a class's files
live, which classes a run means, the device, and the models loaded in the run's settings."""

import itertools
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from config import RunConfig
from tokens import embedding_word, owner_problem
from utils import UsageError, class_dir_name, class_ranges, empty_dir, read_json, write_json


@dataclass
class ClassPaths:
    """Where one class's files live; `<class dir>` is e.g. 283_tiger_cat."""

    dir_name: str
    token_dir: Path
    img_dir: Path

    @classmethod
    def of(cls, cfg: RunConfig, index: int, name: str) -> "ClassPaths":
        d = class_dir_name(index, name)
        out = Path(cfg.output_path)
        return cls(d, out / "pipeline_token" / d / cfg.exp_id, out / "img" / d / cfg.exp_id)

    @property
    def token(self) -> Path:
        return self.token_dir / "learned_embeds.safetensors"

    @property
    def word(self) -> str:
        """The token's prompt word in ComfyUI and AUTOMATIC1111: its embeddings-folder file's name."""
        return embedding_word(self.dir_name, self.token_dir.name)

    @property
    def embedding(self) -> Path:
        """<output_path>/embeddings/<word>.safetensors: the folder to point ComfyUI or AUTOMATIC1111 at."""
        return self.token_dir.parents[2] / "embeddings" / f"{self.word}.safetensors"

    @property
    def owner(self) -> dict[str, str]:
        """Which class and experiment an embeddings-folder file belongs to (its metadata, tokens.OWNER_KEYS)."""
        return dict(disco_class=self.dir_name, disco_exp_id=self.token_dir.name)

    @property
    def card(self) -> Path:
        """The model card, which makes the token folder a hub repository as it is."""
        return self.token_dir / "README.md"

    @property
    def config(self) -> Path:
        return self.token_dir / "config.json"

    @property
    def log(self) -> Path:
        return self.token_dir / "train_log.jsonl"

    @property
    def train_summary(self) -> Path:
        return self.token_dir / "train_summary.json"

    @property
    def metrics(self) -> Path:
        return self.token_dir / "metrics.json"

    def candidate_files(self, k: int, candidates: int) -> tuple[Path, Path]:
        """(training log, training-image folder) of candidate k; a single run keeps the plain layout."""
        if candidates == 1:
            return self.log, self.img_dir / "train"
        return self.token_dir / "candidates" / str(k) / "train_log.jsonl", self.img_dir / "train" / f"candidate{k}"


def resolve_classes(cfg: RunConfig, labels: list[str]) -> list[int]:
    """0-based class indices, checked against the classifier's classes."""
    if cfg.class_name:
        hits = [i for i, n in enumerate(labels) if n.lower() == cfg.class_name.strip().lower()]
        if not hits:
            raise UsageError(f"--class_name {cfg.class_name!r}: not a class of the classifier")
        if len(hits) > 1:
            options = " or ".join(str(i + 1) for i in hits)
            raise UsageError(f"--class_name {cfg.class_name!r} is ambiguous: use --class_index {options}")
        return hits
    n = len(labels)  # checked on the ranges, before the list is made
    beyond = [max(lo, n) + 1 for lo, hi in class_ranges(cfg.class_index) if hi > n]
    if beyond:
        raise UsageError(f"--class_index {cfg.class_index!r}: {min(beyond)} is out of range; allowed 1..{n}")
    return cfg.classes


def check_outputs(cfg: RunConfig, classes: list[int], labels: list[str]) -> None:
    """Every path the run will write, checked before any work: where another kind of file stands (a file
    where a folder goes, or the reverse), or an embeddings-folder file of another run, one line naming it."""
    out = Path(cfg.output_path)
    folders = [out / "pipeline_token", out / "img", out / "embeddings"]
    files = [out / "results.csv", out / "results_summary.json"]
    paths = [ClassPaths.of(cfg, c, labels[c]) for c in classes]
    for p in paths:
        folders += [p.token_dir, p.img_dir, p.img_dir / "train", p.img_dir / "eval"]
        files += [p.token, p.config, p.log, p.train_summary, p.metrics, p.img_dir / "grid.png", p.embedding]
        files += [p.card, p.token_dir / "grid.png"]
        folders += [out / "generated" / p.dir_name] if cfg.generate else []
    kinds = [(_taken(f, True, out) for f in folders), (_taken(f, False, out) for f in files)]
    owners = (owner_problem(p.embedding, p.owner) for p in paths)
    problem = next((x for x in itertools.chain(*kinds, owners) if x), None)  # the first, in that order
    if problem:
        raise UsageError(f"{problem}; move it or change --output_path")


def _taken(path: Path, folder: bool, out: Path) -> str | None:
    """What stands in the way of writing `path` (a folder if `folder`) below `out`, or None."""
    for above in [q for q in reversed(path.parents) if q.is_relative_to(out) and q != out]:
        if above.exists() and not above.is_dir():
            return f"{above}: a file stands where the run writes a folder"
    if path.exists() and path.is_dir() != folder:
        want, found = ("folder", "file") if folder else ("file", "folder")
        return f"{path}: a {found} stands where the run writes a {want}"
    return None


def finished(cfg: RunConfig, sd, paths: ClassPaths) -> bool:
    """--skip_exists: a class is done when its token reads back as a token of this model (and, when
    evaluating, its metrics.json reads); otherwise the run says why and does the class again."""
    from tokens import load_token

    if not paths.token.exists() or (cfg.evaluate and not paths.metrics.exists()):
        return False
    try:
        load_token(paths.token, sd, cfg.placeholder_token)
        read_json(paths.metrics) if cfg.evaluate else None
    except UsageError as e:
        print(f"run.py: note: {e}; doing class {paths.dir_name} again", file=sys.stderr)
        return False
    return True


def device_and_dtype(cfg: RunConfig, state) -> tuple[torch.device, torch.dtype]:
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {cfg.device}: no CUDA GPU is available here; use --device cpu")
    # Half precision only on accelerators; the CPU runs everything in fp32.
    dtypes = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return device, dtypes[cfg.mixed_precision] if device.type != "cpu" else torch.float32


def load_classifiers(cfg: RunConfig, say_notes: bool = True) -> dict:
    """The classifier (and the second judge, which must have the same classes), on the CPU: cheap
    checks that need their labels run before the diffusion model loads."""
    from classifiers import check_same_classes, load_classifier

    classifiers = {"classifier": load_classifier(cfg.classifier, cfg.classifier_pooling)}
    if cfg.eval_classifier:
        classifiers["eval_classifier"] = load_classifier(cfg.eval_classifier, "auto", flag="eval_classifier")
        check_same_classes(classifiers["classifier"], classifiers["eval_classifier"])
    for note in [n for clf in classifiers.values() for n in clf.notes] if say_notes else []:
        print(f"run.py: note: {note}", file=sys.stderr)
    return classifiers


def load_diffusion(cfg: RunConfig, classifiers: dict, device: torch.device, dtype: torch.dtype):
    """Classifiers onto the device; the diffusion model with S_c, in the run's settings."""
    from diffusion import configure, load_sd, model_family

    _, family, _ = model_family(cfg.sd_model)
    sd_only = [f for f in ("pad_to_longest", "text_encoder_autocast", "decay_vocabulary") if getattr(cfg, f)]
    if sd_only and not family.classic:  # the original's SD 1.x text-encoder defects (§7)
        raise UsageError(f"--{sd_only[0]}: reproduces the original's SD 1.x computation; not for a {family.name} model")
    for clf in classifiers.values():  # fp32, fed fp32 images, as the original (docs/original.md §3)
        clf.to(device)
    sd = load_sd(
        cfg.sd_model,
        device,
        dtype,
        size=(cfg.height, cfg.width),
        placeholder=cfg.placeholder_token,
        initializer=cfg.initializer_token,
        slots=cfg.class_batch * cfg.candidates,  # one placeholder slot per run
        safety_checker=cfg.eval_as_original,  # the original evaluated through the model's checker
        train_encoders=cfg.train_encoders,
    )
    configure(sd, cfg.gradient_checkpointing, cfg.compile)
    return sd


def quiet_libraries() -> None:
    """Our own bars and lines are the output; the libraries' loading bars and notices are noise."""
    import diffusers
    import huggingface_hub
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def train_and_record(cfg: RunConfig, sd, clf, c: int, name: str, paths: "ClassPaths", process: int, on_epoch=None):
    """One class (the web demo's unit): `train_batch` for it alone; `on_epoch(entry, images)`."""
    callback = None if on_epoch is None else (lambda _run, entry, images: on_epoch(entry, images))
    return train_batch(cfg, sd, clf, [(c, name, paths)], process=process, on_epoch=callback)[0]


def train_batch(cfg: RunConfig, sd, clf, jobs: list[tuple], *, process: int = 0, on_epoch=None) -> list[dict]:
    """Train the classes in `jobs` ((index, name, ClassPaths) each), `cfg.candidates` runs per class, all
    together; with several candidates, keep per class the one most accurate on the selection seeds
    (judged by the training classifier only). With --retry_below, the candidates come one round at a time,
    each only for the classes whose best token so far falls short of the margin (`adaptive_rounds`).
    Writes config.json before, the tokens and train_summary.json after."""
    from selection import keep_best, selection_scores, verdicts
    from train import forward_size

    for _c, _name, paths in jobs:
        empty_dir(paths.token_dir)  # a class trained again: nothing of its earlier run stays beside the new one
        empty_dir(paths.img_dir)
        write_json(paths.config, cfg.to_dict())
    if cfg.retry_below is None:
        per_class = train_round(cfg, sd, clf, jobs, range(cfg.candidates), on_epoch)
        scores = selection_scores(cfg, sd, clf, per_class, [name for _, name, _ in jobs])
        retries, judged = [None] * len(jobs), None
    else:  # the last round's verdicts are those of the tokens keep_best keeps
        per_class, scores, retries, judged = adaptive_rounds(cfg, sd, clf, jobs, on_epoch)
    together = len(jobs) * (cfg.candidates if cfg.retry_below is None else 1)  # the largest batch of runs
    summaries, chosen = [], []
    for mine, score, retry, (c, name, paths) in zip(per_class, scores, retries, jobs):
        summary, token = keep_best(cfg, sd, mine, score, paths)
        summary |= dict(micro_batch_size=forward_size(cfg, sd, together), runs_together=together)
        summaries.append(summary | ({} if retry is None else dict(candidates_trained=len(mine), retries=retry)))
        chosen.append((token, c, name))
    if cfg.check_learned:
        for summary, verdict in zip(summaries, judged or verdicts(cfg, sd, clf, chosen)):
            summary["learned"] = verdict
    for summary, (_c, _name, paths) in zip(summaries, jobs):
        write_json(paths.train_summary, summary | {"process": process})
    return summaries


def train_round(cfg: RunConfig, sd, clf, jobs: list[tuple], ks, on_epoch=None) -> list[list]:
    """Candidates `ks` of every class in `jobs`, trained together; their runs, per class."""
    from selection import candidate_seed
    from train import new_run, train_runs

    per_class = []
    for c, name, paths in jobs:
        per_class.append([])
        for k in ks:
            log, img = paths.candidate_files(k, cfg.candidates)
            label = paths.dir_name + (f" candidate {k}" if cfg.candidates > 1 else "")
            per_class[-1].append(
                new_run(cfg, sd, c, name, log_path=log, img_dir=img, seed=candidate_seed(cfg.seed, k), label=label)
            )
    runs = [r for mine in per_class for r in mine]
    desc = jobs[0][2].dir_name if len(jobs) == 1 else f"{len(jobs)} classes"
    tracker = trackers(cfg)
    try:
        train_runs(cfg, sd, clf, runs, clf.labels, logged(tracker, on_epoch), desc=desc)
    finally:
        if tracker is not None:
            tracker.end_training()
    return per_class


def adaptive_rounds(cfg: RunConfig, sd, clf, jobs: list[tuple], on_epoch=None) -> tuple[list, list, list]:
    """--retry_below M: candidate 0 of every class, then candidate k + 1 only for the classes whose best
    token so far (chosen as `keep_best` chooses) gains less than M points on the selection seeds, as images
    or under one-pixel shifts (`selection.short_of`), up to --candidates. Those classes train together.
    Returns each class's runs, their selection scores, per candidate why the next one was (not) started, and
    the verdict of each class's best token (the one keep_best keeps)."""
    from selection import best_choice, selection_scores, short_of, token_of, verdicts

    per_class, scores, retries, judged = [[] for _ in jobs], [[] for _ in jobs], [[] for _ in jobs], [None] * len(jobs)
    todo = list(range(len(jobs)))
    for k in range(cfg.candidates):
        mine = [jobs[i] for i in todo]
        new = train_round(cfg, sd, clf, mine, [k], on_epoch)
        for i, runs, score in zip(todo, new, selection_scores(cfg, sd, clf, new, [n for _, n, _ in mine])):
            per_class[i] += runs
            scores[i] += score
        choices = [best_choice(per_class[i], scores[i]) for i in todo]
        best = [(token_of(per_class[i], ch), c, n) for i, ch, (c, n, _) in zip(todo, choices, mine)]
        for i, v in zip(todo, verdicts(cfg, sd, clf, best)):
            judged[i] = v
        short = [short_of(judged[i], cfg.retry_below) for i in todo]
        for i, why in zip(todo, short):
            if why is None:
                note = f"not started: the best token reaches the margin {cfg.retry_below:g}"
            elif k + 1 == cfg.candidates:
                note = f"not started: {why}, but --candidates {cfg.candidates} were trained"
            else:
                note = f"started: {why} (the margin {cfg.retry_below:g})"
                print(f"run.py: class {jobs[i][2].dir_name}: {why}; training candidate {k + 1}", file=sys.stderr)
            retries[i].append(dict(after_candidate=k, next_candidate=note))
        todo = [i for i, why in zip(todo, short) if why is not None]
        if not todo:
            break
    return per_class, scores, retries, judged


def trackers(cfg: RunConfig):
    """--report_to: accelerate's trackers (TensorBoard, Weights & Biases), as diffusers' training scripts
    offer; TensorBoard logs go to <output_path>/logs/."""
    if not cfg.report_to:
        return None
    from accelerate import Accelerator

    tracker = Accelerator(log_with=cfg.report_to, project_dir=str(Path(cfg.output_path) / "logs"))
    flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, int | float | str | bool)}
    tracker.init_trackers("disco", config=flat)
    return tracker


def logged(tracker, on_epoch):
    """Each run's epoch (loss, accuracy, gradient norm) to the trackers, then the caller's callback."""
    if tracker is None:
        return on_epoch

    def callback(run, entry, images):
        keys = ("loss", "accuracy", "grad_norm")
        tracker.log({f"{run.label}/{k}": entry[k] for k in keys}, step=entry["epoch"])
        return on_epoch is not None and on_epoch(run, entry, images)

    return callback


def save_full_pipeline(sd, out: Path) -> None:
    """The whole pipeline with S_c in tokenizer and text encoder, written once, renamed in place."""

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sd.pipe.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
