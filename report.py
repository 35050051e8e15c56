"""Results as a user reads them: one line per class, results.csv, the mean gain over classes."""

import csv
import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

from config import RunConfig
from stats import mean_interval, paired_gain
from utils import font, read_json, save_image, write_json, write_text
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
    seen = f"selection seeds {v['seeds'][0]}..{v['seeds'][1]}, training classifier: baseline "
    seen += f"{pct(v['baseline_accuracy'])} -> token {pct(v['token_accuracy'])}, gain {points(v['gain'])} "
    seen += f"{bounds(*v['gain_ci'], signed=True)}; one-pixel shifts: {points(v['shifted_gain'])} "
    seen += bounds(*v["shifted_gain_ci"], signed=True)
    head = f"class {index + 1} ({name}): "
    if v["learned"]:
        return head + f"learned ({seen})"
    if v["gain_ci"][0] <= 0:
        why = "its gain over the plain prompt is not clearly above zero, so it may not draw the class more often"
    else:
        why = "its gain vanishes when the images move by one pixel, so it may fool the classifier, not draw the class"
    return head + f"NOT LEARNED: {why}; try --candidates 3 or another --seed ({seen})"


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
