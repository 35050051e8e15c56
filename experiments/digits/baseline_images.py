"""The baseline's images beside a run's `--generate` folders, for augment.py and quality.py to compare.

    python run.py --preset digits --class_index 1,2,4,7,8,9 --generate 50 --output_path runs/evid
    python experiments/digits/baseline_images.py --run runs/evid      # generated_baseline/<class dir>/

For every class folder under <run>/generated/, as many images of "A photo of a <class>" with the same
seeds (config.GENERATE_SEED_OFFSET + i) and the evaluation sampler, written to <run>/generated_baseline/.
Flags after `--` are run.py's (the default is the digits world).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import GENERATE_SEED_OFFSET  # noqa: E402
from diffusion import generate  # noqa: E402
from experiments.digits.replay_selection import world  # noqa: E402
from prompt_datasets import EVAL_TEMPLATE, class_prompt  # noqa: E402
from utils import empty_dir, save_image  # noqa: E402


def baseline_images(run: Path, run_flags: list[str]) -> dict[str, int]:
    """Writes the baseline folders; returns the images per class folder."""
    cfg, sd, classifiers = world("--output_path", str(run), *run_flags)
    labels = classifiers["classifier"].labels
    counts = {}
    for folder in sorted(p for p in (run / "generated").iterdir() if p.is_dir()):
        index = int(folder.name.split("_")[0]) - 1
        n = len(list(folder.glob("*.png")))
        out = run / "generated_baseline" / folder.name
        empty_dir(out)
        prompt = class_prompt(EVAL_TEMPLATE, cfg.initializer_token, labels[index])
        for s in range(0, n, cfg.eval_batch_size):
            chunk = list(range(s, min(n, s + cfg.eval_batch_size)))
            seeds = [GENERATE_SEED_OFFSET + i for i in chunk]
            images = generate(sd, prompt, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
            for i, im in zip(chunk, images):
                save_image(out / f"{i:05d}.png", im)
        counts[folder.name] = n
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    argv = sys.argv[1:] if argv is None else argv
    own, run_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run.py's --output_path with generated/")
    counts = baseline_images(Path(ap.parse_args(own).run), run_flags)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    main()
