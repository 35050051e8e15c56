"""DisCo: train and evaluate discriminative class tokens.

python run.py --class_index 283 --train True --evaluate True
python run.py --preset digits --class_index 2          # the offline miniature world
accelerate launch --num_processes 8 run.py --class_index 1-1000   # classes shared by GPUs
"""

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# Progress bars from the main process only. tqdm reads TQDM_DISABLE once, when it is first imported
# (tqdm >= 4.66), so it is set here, before anything imports tqdm, from the rank that the launchers
# (accelerate launch, torchrun, mpirun) give each process; PartialState's main process is rank 0.
_RANK = next((os.environ[k] for k in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK") if k in os.environ), "0")
if _RANK.strip() != "0":
    os.environ["TQDM_DISABLE"] = "1"

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from config import RunConfig, parse_args  # noqa: E402
from utils import UsageError, class_dir_name, remove_stale_tmp, write_json, write_text  # noqa: E402


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
    bad = [i + 1 for i in cfg.classes if i >= len(labels)]
    if bad:
        raise UsageError(f"--class_index {cfg.class_index!r}: {bad[0]} is out of range; allowed 1..{len(labels)}")
    return cfg.classes


def device_and_dtype(cfg: RunConfig, state) -> tuple[torch.device, torch.dtype]:
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {cfg.device}: no CUDA GPU is available here; use --device cpu")
    # Half precision only on accelerators; the CPU runs everything in fp32.
    dtypes = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return device, dtypes[cfg.mixed_precision] if device.type != "cpu" else torch.float32


def run(cfg: RunConfig) -> int:
    from accelerate import PartialState

    from classifiers import check_same_classes, load_classifier
    from diffusion import configure, load_sd
    from evaluate import evaluate_class, generate_dataset
    from train import train_class

    quiet_libraries()
    # cpu=True also when no GPU exists, so that launched processes form a CPU (gloo) group.
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    device, dtype = device_and_dtype(cfg, state)
    classifiers = {"classifier": load_classifier(cfg.classifier, cfg.classifier_pooling)}
    if cfg.eval_classifier:
        classifiers["eval_classifier"] = load_classifier(cfg.eval_classifier, "auto", flag="eval_classifier")
        check_same_classes(classifiers["classifier"], classifiers["eval_classifier"])
    notes = [n for clf in classifiers.values() for n in clf.notes] if state.is_main_process else []
    for note in notes:
        print(f"run.py: note: {note}", file=sys.stderr)
    labels = classifiers["classifier"].labels
    classes = resolve_classes(cfg, labels)
    if not cfg.train:
        for c in classes:
            paths = ClassPaths.of(cfg, c, labels[c])
            if not paths.token.exists():
                raise UsageError(f"--train False: class {c + 1} ({labels[c]}) has no trained token at {paths.token}")
    for clf in classifiers.values():
        clf.to(device, dtype)
    sd = load_sd(cfg.sd_model, device, dtype, (cfg.height, cfg.width), cfg.placeholder_token, cfg.initializer_token)
    configure(sd, cfg.gradient_checkpointing, cfg.compile)

    mine = classes[state.process_index :: state.num_processes]  # each class once, over all processes
    hide = len(mine) < 2 or not state.is_main_process  # an explicit disable= overrides TQDM_DISABLE
    for c in tqdm(mine, desc="classes", unit="class", disable=hide, position=0, dynamic_ncols=True):
        paths = ClassPaths.of(cfg, c, labels[c])
        remove_stale_tmp(paths.token_dir, paths.img_dir)  # left by a run that was killed
        done = paths.token.exists() and (paths.metrics.exists() or not cfg.evaluate)
        if cfg.skip_exists and done:
            continue
        if cfg.train:
            write_json(paths.config, cfg.to_dict())
            summary = train_class(cfg, sd, classifiers["classifier"], c, labels[c], paths)
            write_json(paths.train_summary, summary | {"process": state.process_index})
        if cfg.evaluate:
            m = evaluate_class(cfg, sd, classifiers, c, labels[c], paths)
            tqdm.write(report_line(m))
        if cfg.generate:
            generate_dataset(cfg, sd, labels[c], paths, Path(cfg.output_path) / "generated" / paths.dir_name)
        if cfg.save_as_full_pipeline:
            save_full_pipeline(sd, paths.token_dir / "pipeline")
    state.wait_for_everyone()
    if state.is_main_process:
        rows = write_summary(cfg, classes, labels)
        print(format_table(rows))
        print(f"images: {Path(cfg.output_path) / 'img'}   tokens: {Path(cfg.output_path) / 'pipeline_token'}")
    return 0


def quiet_libraries() -> None:
    """Our own bars and lines are the output; the libraries' loading bars and notices are noise."""
    import diffusers
    import huggingface_hub
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def report_line(m: dict) -> str:
    line = f"class {m['class_index']} ({m['class_name']}): "
    for role in ("classifier", "eval_classifier"):
        if role in m:
            line += f"[{role}] baseline {m[role]['baseline_accuracy']:.0%} -> token {m[role]['token_accuracy']:.0%}  "
    return line.rstrip()


def save_full_pipeline(sd, out: Path) -> None:
    """The whole pipeline with S_c in tokenizer and text encoder, written once, renamed in place."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sd.pipe.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


SUMMARY_FIELDS = ["class_index", "class_name", "exp_id", "baseline_accuracy", "token_accuracy"]
SUMMARY_FIELDS += ["eval_baseline_accuracy", "eval_token_accuracy", "epochs", "train_seconds", "token_path"]


def write_summary(cfg: RunConfig, classes: list[int], labels: list[str]) -> list[dict]:
    """results.csv: one row per (class, exp_id), earlier rows kept, rerun classes replaced."""
    path = Path(cfg.output_path) / "results.csv"
    rows = {}
    if path.exists():
        for r in csv.DictReader(path.open()):
            rows[(int(r["class_index"]), r["exp_id"])] = r
    for c in classes:
        p = ClassPaths.of(cfg, c, labels[c])
        if not p.token.exists():
            continue
        m = json.loads(p.metrics.read_text()) if p.metrics.exists() else {"classifier": {}}
        t = json.loads(p.train_summary.read_text()) if p.train_summary.exists() else {}
        ev = m.get("eval_classifier", {})
        rows[(c + 1, cfg.exp_id)] = dict(
            class_index=c + 1,
            class_name=labels[c],
            exp_id=cfg.exp_id,
            baseline_accuracy=m["classifier"].get("baseline_accuracy", ""),
            token_accuracy=m["classifier"].get("token_accuracy", ""),
            eval_baseline_accuracy=ev.get("baseline_accuracy", ""),
            eval_token_accuracy=ev.get("token_accuracy", ""),
            epochs=t.get("epochs", ""),
            train_seconds=t.get("seconds", ""),
            token_path=str(p.token),
        )
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (int(k[0]), k[1]))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(ordered)
    write_text(path, buf.getvalue())
    wanted = {c + 1 for c in classes}
    return [r for r in ordered if r["exp_id"] == cfg.exp_id and int(r["class_index"]) in wanted]


def format_table(rows: list[dict]) -> str:
    def pct(v):
        return f"{float(v):.0%}" if v != "" else "-"

    lines = [f"{'class':>6}  {'name':24} {'baseline':>8} {'token':>6} {'eval base':>9} {'eval tok':>8}"]
    for r in rows:
        b, t, eb, et = (pct(r[k]) for k in SUMMARY_FIELDS[3:7])
        lines.append(f"{r['class_index']:>6}  {r['class_name'][:24]:24} {b:>8} {t:>6} {eb:>9} {et:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except UsageError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print(
            "run.py: error: out of GPU memory; lower --batch_size (e.g. 1; 0 picks it from free memory), "
            "keep --gradient_checkpointing True, or lower --eval_batch_size",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("run.py: interrupted; finished classes are kept (resume: --skip_exists True)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
