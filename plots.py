"""Pictures of a run drawn with PIL (no plotting library needed): a class's training curve and the gains
of a multi-class run with their intervals."""

import math

from PIL import Image, ImageDraw, ImageFont

W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 320, 56, 56, 52, 40


def font(size: int = 14) -> ImageFont.ImageFont:
    """PIL's bundled scalable font (PIL >= 10.1), readable at any size; its tiny bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


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
