"""The web demo's output folder: the only place the demo reads or writes. Every path is resolved
(symbolic links included) and refused unless it stays inside the folder; every training gets a run
folder of its own; the trained tokens are listed afresh at each call. No gradio, no models."""

import csv
import dataclasses
import json
import os
import re
import secrets
from pathlib import Path

from config import RunConfig
from utils import UsageError, class_dir_name, first_line, read_json
from workspace import ClassPaths


class Store:
    """The output folder in run.py's layout: pipeline_token/<class dir>/<exp_id>/, img/..., results.csv."""

    def __init__(self, out, labels: list[str]):
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.labels = labels
        self.tokens = self.out / "pipeline_token"
        self.summaries = (self.out / "results.csv", self.out / "results_summary.json")

    # ------------------------------------------------------------ safe paths
    def name(self, path) -> str:
        """A path as messages show it: relative to the output folder, never the server's own path."""
        return os.path.relpath(path, self.out) if Path(path).is_absolute() else str(path)

    def leads_inside(self, path) -> bool:
        try:
            return Path(path).resolve().is_relative_to(self.out)
        except (OSError, RuntimeError, ValueError):
            return False

    def check_inside(self, *paths) -> None:
        """Refuse when any path (or a symbolic link on its way) leads out of the output folder."""
        for p in paths:
            if not self.leads_inside(p):
                raise UsageError(f"{self.name(p)[:80]}: leads out of the output folder (a symbolic link?); refused")

    def inside(self, rel, base: Path | None = None) -> Path:
        """`rel` resolved inside `base` (default: the output folder), else refused: no absolute paths,
        no '..' or symbolic link leading out of it."""
        base = (base or self.out).resolve()
        text = str(rel or "").strip()
        if not text or "\0" in text or Path(text).is_absolute():
            raise UsageError(f"{_quoted(text)}: give a path relative to the output folder")
        try:
            p = (base / text).resolve()
        except (OSError, RuntimeError, ValueError):
            raise UsageError(f"{_quoted(text)}: not a path in the output folder") from None
        if not p.is_relative_to(self.out) or not p.is_relative_to(base):
            raise UsageError(f"{_quoted(text)}: outside the output folder; refused")
        return p

    def file(self, rel) -> Path:
        """A file of the output folder to download."""
        p = self.inside(rel)
        try:
            ok = p.is_file()
        except OSError:  # e.g. a name over 255 characters
            ok = False
        if not ok:
            raise UsageError(f"{_quoted(str(rel))}: no such file in the output folder")
        return p

    # ------------------------------------------------------------ runs
    def new_run(self, cfg: RunConfig, c: int) -> tuple[RunConfig, ClassPaths]:
        """A run folder of its own for one training, named from its settings and a random suffix
        (e.g. 'e30_lr0.06_s35_g15_3fa9c1'): no training overwrites another's token or metrics."""
        stem = f"e{cfg.num_train_epochs}_lr{cfg.lr:g}_s{cfg.seed}_g{cfg.grad_steps}"
        for _ in range(20):
            run_cfg = dataclasses.replace(cfg, exp_id=f"{stem}_{secrets.token_hex(3)}", output_path=str(self.out))
            paths = ClassPaths.of(run_cfg, c, self.labels[c])
            self.check_inside(paths.token_dir, paths.img_dir, *self.summaries)
            if paths.img_dir.exists():
                continue
            try:
                paths.token_dir.mkdir(parents=True)  # claims the name
            except FileExistsError:
                continue
            self.check_inside(paths.token_dir)
            return run_cfg, paths
        raise UsageError("no free run folder name; try again")

    def run_name(self, paths: ClassPaths) -> str:
        return f"{paths.dir_name}/{paths.token_dir.name}"

    def run_paths(self, run) -> tuple[int, ClassPaths]:
        """A trained token named as the page lists it, '<class dir>/<exp_id>' (e.g.
        '2_stick/e30_lr0.06_s35_g15_3fa9c1'), -> its class and run.py's paths for it, every one inside."""
        token_dir = self.inside(run, self.tokens)
        rel = token_dir.relative_to(self.tokens.resolve()).parts
        m = re.fullmatch(r"(\d+)_.*", rel[0]) if len(rel) == 2 else None
        c = int(m[1]) - 1 if m else -1
        if not 0 <= c < len(self.labels) or class_dir_name(c, self.labels[c]) != rel[0]:
            raise UsageError(f"{_quoted(str(run))}: not a token folder '<class dir>/<exp_id>' of this classifier")
        paths = ClassPaths(rel[0], token_dir, self.out / "img" / rel[0] / rel[1])
        self.check_inside(paths.img_dir, paths.token)
        if not paths.token.is_file():
            raise UsageError(f"{_quoted(str(run))}: no trained token there (train the class first)")
        return c, paths

    def runs(self) -> list[str]:
        """Every trained token in the output folder now, '<class dir>/<exp_id>', by class index;
        tokens behind a link that leads out of the folder are left out."""
        found = [p for p in self.tokens.glob("*/*/learned_embeds.safetensors") if self.leads_inside(p)]
        names = [f"{p.parts[-3]}/{p.parts[-2]}" for p in found]
        return sorted(names, key=lambda r: (int(m[1]) if (m := re.match(r"(\d+)_", r)) else 0, r))

    def results(self) -> tuple[list[str], list[list]]:
        """results.csv as (headers, rows), without the token paths (the server's own paths)."""
        path = self.summaries[0]
        if not path.is_file() or not self.leads_inside(path):
            return ["class_index", "class_name", "exp_id"], []
        rows = list(csv.DictReader(path.open()))
        headers = [h for h in (rows[0].keys() if rows else []) if h != "token_path"]
        return headers, [[r[h] for h in headers] for r in rows]

    def open_run(self, run) -> dict:
        """One run's class, grid, train log, summary, metrics and files."""
        c, paths = self.run_paths(run)
        grid = paths.img_dir / "grid.png"
        files = [paths.token, paths.config, paths.log, paths.train_summary, paths.metrics, grid]
        files = [f for f in files if f.is_file() and self.leads_inside(f)]
        return dict(
            target=c,
            grid=grid if grid in files else None,
            log=_log(paths.log, files),
            summary=read_json(paths.train_summary, {}) if paths.train_summary in files else {},
            metrics=read_json(paths.metrics, {}) if paths.metrics in files else {},
            files=files,
        )


def _log(path: Path, allowed: list[Path]) -> list[dict]:
    """A run's train_log.jsonl; a damaged one is one line naming it (never a traceback in the page)."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines()] if path in allowed else []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot be read as JSON lines ({first_line(e)})") from e


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:59] + "…")
