"""Results as a user reads them: one line per class, results.csv, the mean gain over classes."""

import csv
import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

from config import RunConfig
from stats import mean_interval, paired_gain
from utils import copy_file, font, read_json, save_image, write_json, write_text
from workspace import ClassPaths


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
    if "agreement" in m:  # a token that fools the training classifier shows as disagreement with the judge
        line += f"[judges agree on {pct(m['agreement']['token'])} of token images]  "
    if "fid" in m:  # Frechet distance to real images on the judge's features (lower: closer to real)
        line += f"[FD on {m['fid']['judge']}] baseline {m['fid']['baseline']:.3g} -> token {m['fid']['token']:.3g}"
    return line.rstrip()


ROLES = {"classifier": "", "eval_classifier": "eval_"}  # results.csv column prefix per judge
STATS = ["baseline_accuracy", "baseline_low", "baseline_high", "token_accuracy", "token_low", "token_high"]
STATS += ["gain", "gain_low", "gain_high"]
SUMMARY_FIELDS = ["class_index", "class_name", "exp_id", "seeds"]
SUMMARY_FIELDS += [prefix + k for prefix in ROLES.values() for k in STATS] + ["fd_baseline", "fd_token"]
SUMMARY_FIELDS += ["agree_baseline", "agree_token", "epochs", "train_seconds", "token_path"]
LEARNED_FIELDS = ["learned", "sel_baseline", "sel_token", "sel_gain", "sel_gain_low", "sel_gain_high"]
LEARNED_FIELDS += ["sel_shifted_gain", "sel_shifted_gain_low"]
SUMMARY_FIELDS += LEARNED_FIELDS
MEAN_GAIN_METHODS = dict(
    over_classes="Student t interval over the classes' gains (classes as a sample of classes)",
    pooled_seeds="Newcombe's paired interval over all (class, seed) pairs (these classes fixed; seed noise only)",
)


def learned_columns(v: dict | None) -> dict:
    """The selection-seed check of train_summary.json as results.csv columns ('' when there is none)."""
    if not v:
        return dict.fromkeys(LEARNED_FIELDS, "")
    values = [v["learned"], v["baseline_accuracy"], v["token_accuracy"], v["gain"], *v["gain_ci"]]
    values += [v["shifted_gain"], v["shifted_gain_ci"][0]]
    return {k: x if isinstance(x, bool) else round(x, 4) for k, x in zip(LEARNED_FIELDS, values)}


def learned_line(index: int, name: str, v: dict) -> str:
    """The token's verdict from the selection seeds, in one line; a plain sentence when it did not learn."""
    return f"class {index + 1} ({name}): " + learned_text(v)


def learned_text(v: dict) -> str:
    """`learned_line` without the class."""
    seen = f"selection seeds {v['seeds'][0]}..{v['seeds'][1]}, training classifier: baseline "
    seen += f"{pct(v['baseline_accuracy'])} -> token {pct(v['token_accuracy'])}, gain {points(v['gain'])} "
    seen += f"{bounds(*v['gain_ci'], signed=True)}; one-pixel shifts: {points(v['shifted_gain'])} "
    seen += bounds(*v["shifted_gain_ci"], signed=True)
    if v["learned"]:
        return f"learned ({seen})"
    if v.get("nothing_to_learn"):  # e.g. an unambiguous class name: no room for a gain, no reason to retrain
        return f"nothing to learn: the plain prompt already draws the class on every selection seed ({seen})"
    if v["gain_ci"][0] <= 0:
        why = "its gain over the plain prompt is not clearly above zero, so it may not draw the class more often"
    else:
        why = "its gain vanishes when the images move by one pixel, so it may fool the classifier, not draw the class"
    return f"NOT LEARNED: {why}; try --candidates 3 or another --seed ({seen})"


def with_intervals(res: dict, target: int) -> dict:
    """One judge's results with their intervals (a metrics.json written before intervals existed gets them now)."""
    if "gain_ci" in res:
        return res
    from evaluate import intervals

    return res | intervals(res, target)


def csv_stats(m: dict, role: str, target: int) -> dict:
    """One judge's accuracies, gain and 95% intervals as results.csv columns ('' when not evaluated)."""
    res = m.get(role)
    if not res:
        return {ROLES[role] + k: "" for k in STATS}
    res = with_intervals(res, target)
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
        m, t = read_json(p.metrics, {}), read_json(p.train_summary, {})
        rows[(c + 1, cfg.exp_id)] = dict(
            class_index=c + 1,
            class_name=labels[c],
            exp_id=cfg.exp_id,
            seeds=len(m.get("seeds", [])) or "",
            **csv_stats(m, "classifier", c),
            **csv_stats(m, "eval_classifier", c),
            fd_baseline=round(m["fid"]["baseline"], 4) if "fid" in m else "",
            fd_token=round(m["fid"]["token"], 4) if "fid" in m else "",
            agree_baseline=m.get("agreement", {}).get("baseline", ""),
            agree_token=m.get("agreement", {}).get("token", ""),
            epochs=t.get("epochs", ""),
            train_seconds=t.get("seconds", ""),
            token_path=str(p.token),
            **learned_columns(t.get("learned")),
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
    if len(mine) >= 2:
        save_gains_chart(mine, path.with_name(f"results_gains_{cfg.exp_id}.png"), cfg.exp_id)
    if means:
        summary_path = path.with_name("results_summary.json")
        summary = read_json(summary_path, {})
        summary[cfg.exp_id] = dict(classes=[int(r["class_index"]) for r in mine], methods=MEAN_GAIN_METHODS, **means)
        write_json(summary_path, summary)
    return mine


def save_gains_chart(rows: list[dict], path: Path, exp_id: str) -> None:
    """The gains with their intervals beside results.csv, by the independent judge when there is one."""
    judged = [(r, p) for r, p in reversed(ROLES.items()) if any(x.get(p + "gain", "") != "" for x in rows)]
    if not judged:  # trained, not evaluated
        return
    role, prefix = judged[0]
    keys = ("gain", "gain_low", "gain_high")
    shown = [dict(class_index=r["class_index"], **{k: r.get(prefix + k, "") for k in keys}) for r in rows]
    save_image(path, gains_chart(shown, f"{exp_id}: gain per class in points, judged by {role}"))


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


# Pictures drawn with PIL (no plotting library): a class's training curve, the gains of a multi-class run.
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 320, 56, 56, 52, 40


def _axes(title: str, y_label: str, y_range: tuple[float, float], x_label: str, right: tuple[str, float] | None = None):
    """A white canvas with a box, five labelled grid lines (and a second scale on the right, if given)."""
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 6), title, fill="black", font=font(15))
    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    lo, hi = y_range
    for k in range(5):
        v, y = lo + (hi - lo) * k / 4, _y(lo + (hi - lo) * k / 4, y_range)
        d.line([LEFT, y, W - RIGHT, y], fill="#dddddd")
        d.text((4, y - 7), f"{v:.3g}", fill="black", font=font(12))
        if right is not None:
            d.text((W - RIGHT + 4, y - 7), f"{right[1] * k / 4:.3g}", fill="black", font=font(12))
    d.text((4, TOP - 18), y_label, fill="black", font=font(12))
    if right is not None:
        d.text((W - RIGHT - 60, TOP - 18), right[0], fill="black", font=font(12))
    d.text((LEFT, H - BOTTOM + 20), x_label, fill="black", font=font(12))
    return img, d


def _y(v: float, y_range: tuple[float, float]) -> float:
    lo, hi = y_range
    return H - BOTTOM - (v - lo) / ((hi - lo) or 1) * (H - TOP - BOTTOM)


def training_curve(log: list[dict], title: str) -> Image.Image:
    """Loss (blue, left scale) and training accuracy (orange, right scale 0-1) by epoch, 1-based as the
    progress bars and the web demo count them."""
    losses = [e["loss"] for e in log if e["loss"] == e["loss"] and abs(e["loss"]) != float("inf")]
    top = max([1e-3, *losses]) * 1.05
    img, d = _axes(title, "loss", (0.0, top), "epoch", right=("accuracy", 1.0))
    x = lambda i: LEFT + (i + 0.5) / max(1, len(log)) * (W - LEFT - RIGHT)  # noqa: E731
    for i in sorted({0, len(log) - 1}):
        d.text((x(i) - 4, H - BOTTOM + 4), str(i + 1), fill="black", font=font(12))
    for key, color, scale in (("loss", "#1f5fbf", 1.0), ("accuracy", "#e07b00", top)):
        pts = [(x(i), _y(e[key] * scale, (0.0, top))) for i, e in enumerate(log) if e[key] * scale <= top]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        for p in pts:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=color)
    return img


def gains_chart(rows: list[dict], title: str) -> Image.Image:
    """One bar per class: the gain in points with its 95% interval (results.csv's gain, gain_low, gain_high)."""
    have = [r for r in rows if r.get("gain", "") != ""]
    lows = [100 * float(r["gain_low"]) for r in have] + [0.0]
    highs = [100 * float(r["gain_high"]) for r in have] + [0.0]
    y_range = (10 * math.floor(min(lows) / 10), 10 * math.ceil(max(highs) / 10))
    img, d = _axes(title, "gain in points, 95% interval", y_range, "class")
    step = (W - LEFT - RIGHT) / max(1, len(have))
    zero = _y(0.0, y_range)
    d.line([LEFT, zero, W - RIGHT, zero], fill="black")
    for i, r in enumerate(have):
        cx = LEFT + (i + 0.5) * step
        g, lo, hi = (100 * float(r[k]) for k in ("gain", "gain_low", "gain_high"))
        d.rectangle(
            [cx - step * 0.3, min(zero, _y(g, y_range)), cx + step * 0.3, max(zero, _y(g, y_range))], fill="#6a9fd8"
        )
        d.line([cx, _y(lo, y_range), cx, _y(hi, y_range)], fill="black", width=2)
        for v in (lo, hi):
            d.line([cx - 5, _y(v, y_range), cx + 5, _y(v, y_range)], fill="black", width=2)
        d.text((cx - step * 0.4, H - BOTTOM + 4), str(r["class_index"])[:6], fill="black", font=font(11))
    return img


# The model card in each token folder, so that the folder is a hub repository as it is (README.md's front
# matter is what the hub reads: huggingface_hub.ModelCard parses it).
HUB_LICENSES = {  # the hub's license field of the default models (and of the presets' models)
    "CompVis/stable-diffusion-v1-4": ("creativeml-openrail-m", None),
    "stabilityai/stable-diffusion-2-1-base": ("openrail++", None),
    "stabilityai/stable-diffusion-xl-base-1.0": ("openrail++", None),
    "stabilityai/sdxl-turbo": ("other", "sai-nc-community"),
    "stabilityai/stable-diffusion-3-medium-diffusers": ("other", "stabilityai-ai-community"),
    "black-forest-labs/FLUX.1-schnell": ("apache-2.0", None),
    "black-forest-labs/FLUX.1-dev": ("other", "flux-1-dev-non-commercial-license"),
}


def is_local(ref: str) -> bool:
    return Path(ref).expanduser().is_dir()


def shown(ref: str) -> str:
    """A model as a card names it: the hub id, or a local folder's name only (no path of this machine)."""
    return f"{Path(ref).expanduser().resolve().name} (a local folder)" if is_local(ref) else ref


def write_card(cfg: RunConfig, sd, c: int, name: str, paths: ClassPaths) -> None:
    """README.md in the token folder: front matter (base model, license, tags, the prompt), the class, the
    evaluation table of metrics.json with its grid (copied beside it) when the class was evaluated, how to
    load the token in diffusers, ComfyUI and AUTOMATIC1111, and how to upload the folder."""
    from prompt_datasets import EVAL_TEMPLATE, class_prompt

    prompt = class_prompt(EVAL_TEMPLATE, paths.word, name)
    m = read_json(paths.metrics) if paths.metrics.exists() else None
    grid = paths.img_dir / "grid.png"
    if m is not None and grid.is_file():
        copy_file(grid, paths.token_dir / "grid.png")
    has_grid = m is not None and (paths.token_dir / "grid.png").is_file()
    parts = [card_front_matter(cfg, sd, prompt, has_grid), card_intro(cfg, sd, c, name, paths, prompt)]
    parts += [card_evaluation(m, c, has_grid) if m else "## Evaluation\n\nNot evaluated (`--evaluate False`).\n"]
    parts += [card_usage(cfg, sd, paths, prompt), card_upload(paths)]
    write_text(paths.card, "\n".join(parts))


def card_front_matter(cfg: RunConfig, sd, prompt: str, has_grid: bool) -> str:
    from huggingface_hub import ModelCardData

    license_id, license_name = HUB_LICENSES.get(cfg.sd_model, ("other", None))
    data = ModelCardData(
        base_model=None if is_local(cfg.sd_model) else cfg.sd_model,
        license=license_id,
        license_name=license_name,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=["textual-inversion", "disco", "diffusers", sd.family.hub_tag, "text-to-image"],
        instance_prompt=prompt,
        widget=[dict(text=prompt, output=dict(url="grid.png"))] if has_grid else None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def card_intro(cfg: RunConfig, sd, c: int, name: str, paths: ClassPaths, prompt: str) -> str:
    base = shown(cfg.sd_model)
    where = "\nA local model folder has no hub id: the card names no `base_model`." if is_local(cfg.sd_model) else ""
    known = cfg.sd_model in HUB_LICENSES
    licence = "" if known else "\nThe license is the base model's (`other` here): check it before sharing the token."
    return (
        f"# {paths.word}: a DisCo class token for {name}\n\n"
        f"A discriminative class token (DisCo, ICCV 2023) for class {c + 1} ({name}) of the classifier "
        f"`{shown(cfg.classifier)}`: one new word of the text encoder{'s' if not sd.family.classic else ''} of "
        f"`{base}` ({sd.family.name}), trained so that the frozen classifier recognises the class in the images "
        f"of the prompt (experiment `{cfg.exp_id}`)\n\n```text\n{prompt}\n```\n{where}{licence}\n"
    )


def card_evaluation(m: dict, c: int, has_grid: bool) -> str:
    """metrics.json as a table: per judge, both accuracies and the gain with their 95% intervals, printed
    as the run's own table prints them."""
    seeds = m.get("seeds", [])
    lines = [
        "## Evaluation\n",
        f"{len(seeds)} images per prompt on the evaluation seeds {seeds[0]}..{seeds[-1]}, the same seeds for both "
        f'prompts (baseline: "{m["prompts"]["baseline"]}"; token: the prompt above). Each judge names the class '
        "it sees; 95% intervals: Wilson for the accuracies, Newcombe's paired interval for the gain (points).\n",
        "| judge | classifier | baseline | token | gain |",
        "| --- | --- | --- | --- | --- |",
    ]
    for role in ROLES:
        res = m.get(role)
        if not res:
            continue
        res = with_intervals(res, c)
        cells = [role, f"`{shown(res['name'])}`", f"{pct(res['baseline_accuracy'])} {bounds(*res['baseline_ci'])}"]
        cells += [f"{pct(res['token_accuracy'])} {bounds(*res['token_ci'])}"]
        cells += [f"{points(res['gain'])} {bounds(*res['gain_ci'], signed=True)}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("\n`classifier` trained the token; `eval_classifier`, when present, is a second judge that did not.\n")
    if has_grid:
        lines.append("![The same seeds: baseline prompt (top) and token prompt (bottom)](grid.png)\n")
    return "\n".join(lines)


def card_usage(cfg: RunConfig, sd, paths: ClassPaths, prompt: str) -> str:
    word = paths.word
    return (
        f"## Use it\n\n**diffusers**\n\n```python\n{diffusers_code(cfg, sd, word, prompt)}```\n\n{diffusers_note(sd)}"
        f"**ComfyUI** and **AUTOMATIC1111** take the prompt word from the file's name: the run wrote "
        f"`embeddings/{word}.safetensors` beside its results.csv (or save `learned_embeds.safetensors` under that "
        f"name). In ComfyUI's models/embeddings folder, write `embedding:{word}` in the prompt; in "
        f"AUTOMATIC1111's embeddings folder, write `{word}`. {tool_support(sd)}\n"
    )


def diffusers_code(cfg: RunConfig, sd, word: str, prompt: str) -> str:
    """SD 1.x: diffusers' own loader; SDXL, FLUX.1: its loader once per text encoder; SD3 (no loader):
    docs/reuse_example.py's add_token."""
    base = "<base model>" if is_local(cfg.sd_model) else cfg.sd_model
    lines = ["from diffusers import DiffusionPipeline"] + ([] if sd.family.classic else [LOAD_FILE]) + [""]
    lines += [f'pipe = DiffusionPipeline.from_pretrained("{base}")']
    if sd.family.classic:
        lines += [f'pipe.load_textual_inversion("learned_embeds.safetensors", token="{word}")']
    elif sd.family.name == "SD3":
        lines += [f'add_token(pipe, load_file("learned_embeds.safetensors"), "{word}")  # docs/reuse_example.py']
    else:
        lines += ['rows = load_file("learned_embeds.safetensors")']
        lines += [
            f'pipe.load_textual_inversion(rows["{key}"], token="{word}", text_encoder=pipe.{te}, tokenizer=pipe.{tok})'
            for te, tok, key in sd.family.encoders
        ]
    return "\n".join([*lines, f'image = pipe("{prompt}").images[0]', ""])


LOAD_FILE = "from safetensors.torch import load_file"


def diffusers_note(sd) -> str:
    if sd.family.classic:
        return ""
    return (
        "Training pooled CLIP at the end-of-text token; a CLIP config with `eos_token_id: 2` pools at the new "
        "word instead. `add_token` of the DisCo project's docs/reuse_example.py loads every row (SD3's pipeline "
        "has no loader: it sets the rows itself) and pools as training did.\n\n"
    )


def tool_support(sd) -> str:
    """Which of the two tools read this family's file (docs/pipelines.md, "Reuse in ComfyUI and AUTOMATIC1111")."""
    name = sd.family.name
    if name == "FLUX.1":
        return "ComfyUI reads FLUX.1 files (clip_l, t5xxl); AUTOMATIC1111 does not."
    if name == "SD3":
        return "ComfyUI reads every row; AUTOMATIC1111 reads the clip_l and clip_g rows (not t5xxl)."
    return f"Both read {name} files."


def upload_command() -> str:
    """The hub CLI of the installed huggingface_hub: `hf` (0.34 and later), else `huggingface-cli`."""
    import importlib.util

    return "hf upload" if importlib.util.find_spec("huggingface_hub.cli.hf") else "huggingface-cli upload"


def card_upload(paths: ClassPaths) -> str:
    big = ' (add `--exclude "pipeline/*"` to leave out a full pipeline written by --save_as_full_pipeline)'
    return (
        "## Files and upload\n\n"
        "`learned_embeds.safetensors` (the token), `config.json` (the run's settings, local paths included), "
        "`train_log.jsonl`, `train_summary.json`, `metrics.json`, `grid.png` when evaluated. The folder is a model "
        f"repository as it is{big}:\n\n"
        f"```bash\ncd <output_path>   # the folder that holds pipeline_token/\n"
        f"{upload_command()} <your name>/{paths.word} {paths.token_dir.relative_to(paths.token_dir.parents[2])}\n```\n"
    )
