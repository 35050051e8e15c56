"""Does a trained token act through its direction or its size? Moves S_c along its offset from the
initializer (scale 0: the initializer "a", the baseline prompt; 1: the trained token; 2: twice as far)
and judges "A photo of S_c <word>" on the validation seeds, with the agreement of the two classifiers.

python experiments/digits/token_scale.py \
    out/sel/pipeline_token/4_curl/s1e10_s36/learned_embeds.safetensors --scales 0 1 1.5 2

The class is read from the token's folder (<class dir>/<exp_id>/learned_embeds.safetensors) or given with
--class_index (1-based). Prints one markdown row per token: judge accuracy / agreement per scale.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import VALIDATION_SEED  # noqa: E402
from experiments.digits.replay_selection import judged, world  # noqa: E402
from tokens import load_token  # noqa: E402


def along(init: torch.Tensor, token: torch.Tensor, scales: list[float]) -> list[torch.Tensor]:
    """The points init + s * (token - init): 0 is the initializer, 1 the token."""
    return [init + s * (token - init) for s in scales]


def rows(files: list[Path], classes: list[int], scales: list[float], seeds: int) -> list[str]:
    cfg, sd, classifiers = world("--class_batch", str(len(scales)))
    labels, out = classifiers["classifier"].labels, []
    validation = list(range(VALIDATION_SEED, VALIDATION_SEED + seeds))
    for file, c in zip(files, classes):
        points = along(sd.init_embedding, load_token(file, sd, cfg.placeholder_token), scales)
        scores = judged(cfg, sd, classifiers, [(p, labels[c]) for p in points], validation, c)
        cells = [f"{100 * s['judge']:.0f}% / {100 * s['agree']:.0f}%" for s in scores]
        out.append(f"| {file} | {c + 1} {labels[c]} | " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", nargs="+", type=Path)
    ap.add_argument("--class_index", type=int, nargs="*", help="1-based, one per token (default: from its folder)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0, 1, 1.25, 1.5, 2])
    ap.add_argument("--seeds", type=int, default=100, help="validation seeds from VALIDATION_SEED")
    a = ap.parse_args(argv)
    try:
        given = a.class_index or [int(f.resolve().parts[-3].split("_")[0]) for f in a.tokens]
    except ValueError:
        ap.error("cannot read the class from the token's folder: give --class_index")
    if len(given) != len(a.tokens):
        ap.error("--class_index: one per token")
    print("| token | class | " + " | ".join(f"scale {s:g}: judge / agree" for s in a.scales) + " |")
    print("| --- | --- |" + " --- |" * len(a.scales))
    for row in rows(a.tokens, [c - 1 for c in given], a.scales, a.seeds):
        print(row, flush=True)


if __name__ == "__main__":
    main()
