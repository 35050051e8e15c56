"""DisCo: train and evaluate discriminative class tokens.

python run.py --class_index 283 --train True --evaluate True
python run.py --preset digits --class_index 2          # the offline miniature world
accelerate launch --num_processes 8 run.py --class_index 1-1000   # classes shared by GPUs
"""

import csv
import io
import json
import math
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
from stats import mean_interval, paired_gain  # noqa: E402
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

    from evaluate import check_fid_references, evaluate_class, generate_dataset

    quiet_libraries()
    # cpu=True also when no GPU exists, so that launched processes form a CPU (gloo) group.
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    device, dtype = device_and_dtype(cfg, state)
    classifiers = load_classifiers(cfg, state.is_main_process)
    labels = classifiers["classifier"].labels
    classes = resolve_classes(cfg, labels)
    if not cfg.train:
        for c in classes:
            paths = ClassPaths.of(cfg, c, labels[c])
            if not paths.token.exists():
                raise UsageError(f"--train False: class {c + 1} ({labels[c]}) has no trained token at {paths.token}")
    check_fid_references(cfg, classes, labels)
    sd = load_diffusion(cfg, classifiers, device, dtype)

    mine = classes[state.process_index :: state.num_processes]  # each class once, over all processes
    hide = len(mine) < 2 or not state.is_main_process  # an explicit disable= overrides TQDM_DISABLE
    for c in tqdm(mine, desc="classes", unit="class", disable=hide, position=0, dynamic_ncols=True):
        paths = ClassPaths.of(cfg, c, labels[c])
        remove_stale_tmp(paths.token_dir, paths.img_dir)  # left by a run that was killed
        done = paths.token.exists() and (paths.metrics.exists() or not cfg.evaluate)
        if cfg.skip_exists and done:
            continue
        if cfg.train:
            train_and_record(cfg, sd, classifiers["classifier"], c, labels[c], paths, state.process_index)
        if cfg.evaluate:
            m = evaluate_class(cfg, sd, classifiers, c, labels[c], paths)
            tqdm.write(report_line(m))
        if cfg.generate:
            generate_dataset(cfg, sd, labels[c], paths, Path(cfg.output_path) / "generated" / paths.dir_name)
            if cfg.generate_baseline:  # the same seeds with "A photo of a <class>" (digits/augment.py compares)
                out = Path(cfg.output_path) / "generated_baseline" / paths.dir_name
                generate_dataset(cfg, sd, labels[c], paths, out, token=False)
        if cfg.save_as_full_pipeline:
            save_full_pipeline(sd, paths.token_dir / "pipeline")
    state.wait_for_everyone()
    if state.is_main_process:
        rows = write_summary(cfg, classes, labels)
        print(format_table(rows))
        print(f"images: {Path(cfg.output_path) / 'img'}   tokens: {Path(cfg.output_path) / 'pipeline_token'}")
    return 0


def train_and_record(cfg: RunConfig, sd, clf, c: int, name: str, paths: "ClassPaths", process: int, on_epoch=None):
    """train_class with its files: the run's config.json before, train_summary.json after."""
    from train import train_class

    write_json(paths.config, cfg.to_dict())
    summary = train_class(cfg, sd, clf, c, name, paths, on_epoch)
    write_json(paths.train_summary, summary | {"process": process})
    return summary


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
    from diffusion import configure, load_sd

    for clf in classifiers.values():
        clf.to(device, dtype)
    sd = load_sd(cfg.sd_model, device, dtype, (cfg.height, cfg.width), cfg.placeholder_token, cfg.initializer_token)
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


def pct(x) -> str:
    return f"{round(100 * float(x))}%"


def points(x) -> str:
    return f"{round(100 * float(x)) + 0:+d}"  # + 0: no "-0"


def bounds(low, high, signed: bool = False) -> str:
    """A 95% interval in percent ('[36-56]') or signed points ('[+19,+41]'), rounded outward."""
    lo, hi = math.floor(100 * float(low) + 1e-9), math.ceil(100 * float(high) - 1e-9)
    return f"[{lo:+d},{hi:+d}]" if signed else f"[{lo}-{hi}]"


def judged(res: dict) -> str:
    """'baseline 46% [36-56] -> token 76% [67-83], gain +30 [+19,+41]' (95% intervals, stats.py)."""
    text = f"baseline {pct(res['baseline_accuracy'])} {bounds(*res['baseline_ci'])}"
    text += f" -> token {pct(res['token_accuracy'])} {bounds(*res['token_ci'])}"
    return text + f", gain {points(res['gain'])} {bounds(*res['gain_ci'], signed=True)}"


def report_line(m: dict) -> str:
    line = f"class {m['class_index']} ({m['class_name']}): "
    for role in ("classifier", "eval_classifier"):
        if role in m:
            line += f"[{role}] {judged(m[role])}  "
    if "fid" in m:  # Frechet distance to real images on the judge's features (lower: closer to real)
        line += f"[FD on {m['fid']['judge']}] baseline {m['fid']['baseline']:.3g} -> token {m['fid']['token']:.3g}"
    return line.rstrip()


def save_full_pipeline(sd, out: Path) -> None:
    """The whole pipeline with S_c in tokenizer and text encoder, written once, renamed in place."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sd.pipe.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


ROLES = {"classifier": "", "eval_classifier": "eval_"}  # results.csv column prefix per judge
STATS = ["baseline_accuracy", "baseline_low", "baseline_high", "token_accuracy", "token_low", "token_high"]
STATS += ["gain", "gain_low", "gain_high"]
SUMMARY_FIELDS = ["class_index", "class_name", "exp_id", "seeds"]
SUMMARY_FIELDS += [prefix + k for prefix in ROLES.values() for k in STATS] + ["fd_baseline", "fd_token"]
SUMMARY_FIELDS += ["epochs", "train_seconds", "token_path"]
MEAN_GAIN_METHODS = dict(
    over_classes="Student t interval over the classes' gains (classes as a sample of classes)",
    pooled_seeds="Newcombe's paired interval over all (class, seed) pairs (these classes fixed; seed noise only)",
)


def csv_stats(m: dict, role: str, target: int) -> dict:
    """One judge's accuracies, gain and 95% intervals as results.csv columns ('' when not evaluated)."""
    res = m.get(role)
    if not res:
        return {ROLES[role] + k: "" for k in STATS}
    if "gain_ci" not in res:  # metrics.json written before intervals existed: compute them now
        from evaluate import intervals

        res = res | intervals(res, target)
    values = [res["baseline_accuracy"], *res["baseline_ci"], res["token_accuracy"], *res["token_ci"]]
    values += [res["gain"], *res["gain_ci"]]
    hits = {f"_{role}_{kind}_hits": [p == target for p in res[f"{kind}_predictions"]] for kind in ("baseline", "token")}
    return {ROLES[role] + k: round(v, 4) for k, v in zip(STATS, values)} | hits  # _hits: not csv columns


def write_summary(cfg: RunConfig, classes: list[int], labels: list[str]) -> list[dict]:
    """results.csv: one row per (class, exp_id), earlier rows kept, rerun classes replaced. With several
    classes, also the mean gain over them in results_summary.json (per exp_id)."""
    path = Path(cfg.output_path) / "results.csv"
    rows = {}
    if path.exists():
        for r in csv.DictReader(path.open()):
            rows[(int(r["class_index"]), r["exp_id"])] = r
    for c in classes:
        p = ClassPaths.of(cfg, c, labels[c])
        if not p.token.exists():
            continue
        m = json.loads(p.metrics.read_text()) if p.metrics.exists() else {}
        t = json.loads(p.train_summary.read_text()) if p.train_summary.exists() else {}
        rows[(c + 1, cfg.exp_id)] = dict(
            class_index=c + 1,
            class_name=labels[c],
            exp_id=cfg.exp_id,
            seeds=len(m.get("seeds", [])) or "",
            **csv_stats(m, "classifier", c),
            **csv_stats(m, "eval_classifier", c),
            fd_baseline=round(m["fid"]["baseline"], 4) if "fid" in m else "",
            fd_token=round(m["fid"]["token"], 4) if "fid" in m else "",
            epochs=t.get("epochs", ""),
            train_seconds=t.get("seconds", ""),
            token_path=str(p.token),
        )
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (int(k[0]), k[1]))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_FIELDS, extrasaction="ignore")  # rows of older files: missing -> ''
    writer.writeheader()
    writer.writerows(ordered)
    write_text(path, buf.getvalue())
    wanted = {c + 1 for c in classes}
    mine = [r for r in ordered if r["exp_id"] == cfg.exp_id and int(r["class_index"]) in wanted]
    means = mean_gains(mine)
    if means:
        summary_path = path.with_name("results_summary.json")
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        summary[cfg.exp_id] = dict(classes=[int(r["class_index"]) for r in mine], methods=MEAN_GAIN_METHODS, **means)
        write_json(summary_path, summary)
    return mine


def mean_gains(rows: list[dict]) -> dict:
    """Per judge, the mean gain over 2+ classes with two 95% intervals (MEAN_GAIN_METHODS): over classes, and,
    where the per-seed outcomes are at hand, pooled over (class, seed) pairs, which stays honest when every
    class gained the same (the t interval then has zero width)."""
    out = {}
    for role, prefix in ROLES.items():
        have = [r for r in rows if r.get(prefix + "gain", "") != ""]
        if len(have) < 2:
            continue
        mean, low, high = mean_interval([float(r[prefix + "gain"]) for r in have])
        g = dict(n_classes=len(have), mean_gain=round(mean, 4), over_classes=[round(low, 4), round(high, 4)])
        hits = [(r[f"_{role}_token_hits"], r[f"_{role}_baseline_hits"]) for r in have if f"_{role}_token_hits" in r]
        if len(hits) == len(have) and len({len(t) for t, _ in hits}) == 1:  # equal n: pooled gain = mean gain
            pooled = paired_gain(sum((t for t, _ in hits), []), sum((b for _, b in hits), []))
            g["pooled_seeds"] = [round(pooled[1], 4), round(pooled[2], 4)]
        out[role] = g
    return out


def format_table(rows: list[dict]) -> str:
    """One line per class and judge: accuracies and gain with 95% intervals; then the mean gain over classes."""

    def cell(r: dict, prefix: str, stem: str, value_key: str) -> str:
        v, lo, hi = r.get(prefix + value_key, ""), r.get(f"{prefix}{stem}_low", ""), r.get(f"{prefix}{stem}_high", "")
        text = "-" if v == "" else points(v) if stem == "gain" else pct(v)
        return f"{text} {bounds(lo, hi, stem == 'gain')}" if "" not in (v, lo, hi) else text

    lines = [f"{'class':>6}  {'name':24} {'judge':16} {'baseline':>14} {'token':>14} {'gain':>14}"]
    for r in rows:
        head = f"{r['class_index']:>6}  {r['class_name'][:24]:24}"
        for role, prefix in ROLES.items():
            if r.get(prefix + "baseline_accuracy", "") == "" and role != "classifier":
                continue
            b, t = cell(r, prefix, "baseline", "baseline_accuracy"), cell(r, prefix, "token", "token_accuracy")
            lines.append(f"{head} {role:16} {b:>14} {t:>14} {cell(r, prefix, 'gain', 'gain'):>14}")
            head = " " * len(head)
    for role, g in mean_gains(rows).items():
        line = f"mean gain over {g['n_classes']} classes [{role}]: {points(g['mean_gain'])}"
        line += f" {bounds(*g['over_classes'], signed=True)} (t interval over classes)"
        if "pooled_seeds" in g:
            line += f", {bounds(*g['pooled_seeds'], signed=True)} (paired, pooled over classes x seeds)"
        lines.append(line)
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
