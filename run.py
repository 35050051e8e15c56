"""DisCo: train and evaluate discriminative class tokens.

python run.py --class_index 283 --train True --evaluate True
python run.py --preset digits --class_index 2          # the offline miniature world
accelerate launch --num_processes 8 run.py --class_index 1-1000   # classes shared by GPUs
"""

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # run.py imports the project lazily: quiet_other_ranks must run before tqdm is imported
    from config import RunConfig


def quiet_other_ranks() -> None:
    """Progress bars from the main process only. tqdm reads TQDM_DISABLE once, when it is first
    imported, so this runs before anything imports it, from the rank that the launchers
    (accelerate launch, torchrun, mpirun) give each process."""
    rank = next((os.environ[k] for k in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK") if k in os.environ), "0")
    if rank.strip() != "0":
        os.environ["TQDM_DISABLE"] = "1"


def run(cfg: "RunConfig") -> int:
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from evaluate import check_fid_references, evaluate_classes
    from report import format_table, learned_line, report_line, write_summary
    from tokens import load_token
    from utils import UsageError, remove_stale_tmp, remove_stale_tmp_of
    from workspace import (
        ClassPaths,
        check_outputs,
        device_and_dtype,
        finished,
        load_classifiers,
        load_diffusion,
        quiet_libraries,
        resolve_classes,
        train_batch,
    )

    quiet_libraries()
    # cpu=True also when no GPU exists, so that launched processes form a CPU (gloo) group.
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    device, dtype = device_and_dtype(cfg, state)
    classifiers = load_classifiers(cfg, state.is_main_process)
    labels = classifiers["classifier"].labels
    classes = resolve_classes(cfg, labels)
    check_outputs(cfg, classes, labels)
    given = [ClassPaths.of(cfg, c, labels[c]).token for c in classes] if not cfg.train else []
    for c, token in zip(classes, given):
        if not token.exists():
            raise UsageError(f"--train False: class {c + 1} ({labels[c]}) has no trained token at {token}")
    check_fid_references(cfg, classes, labels)
    sd = load_diffusion(cfg, classifiers, device, dtype)
    for token in given:  # each one readable and of this model, before any image is made
        load_token(token, sd, cfg.placeholder_token)

    mine = classes[state.process_index :: state.num_processes]  # each class once, over all processes
    hide = len(mine) < 2 or not state.is_main_process  # an explicit disable= overrides TQDM_DISABLE
    bar = tqdm(total=len(mine), desc="classes", unit="class", disable=hide, position=0, dynamic_ncols=True)
    with bar:  # closed also when interrupted, so that no bar is redrawn after the last message
        for start in range(0, len(mine), cfg.class_batch):
            jobs = []
            for c in mine[start : start + cfg.class_batch]:
                paths = ClassPaths.of(cfg, c, labels[c])
                remove_stale_tmp(paths.token_dir, paths.img_dir)  # left by a run that was killed
                remove_stale_tmp_of(paths.embedding)  # the shared folder: this class's leftovers only
                if not (cfg.skip_exists and finished(cfg, sd, paths)):
                    jobs.append((c, labels[c], paths))
            if cfg.train and jobs:
                summaries = train_batch(cfg, sd, classifiers["classifier"], jobs, process=state.process_index)
                for (c, name, _), summary in zip(jobs, summaries):
                    if "learned" in summary:
                        tqdm.write(learned_line(c, name, summary["learned"]))
            if cfg.evaluate and jobs:  # the batch's classes generate their evaluation images together
                for m in evaluate_classes(cfg, sd, classifiers, jobs):
                    tqdm.write(report_line(m))
            for c, name, paths in jobs:
                finish_class(cfg, sd, c, name, paths)
            bar.update(len(mine[start : start + cfg.class_batch]))
    state.wait_for_everyone()
    if state.is_main_process:
        rows = write_summary(cfg, classes, labels)
        print(format_table(rows))
        out = Path(cfg.output_path)
        print(f"images: {out / 'img'}   tokens: {out / 'pipeline_token'}   embeddings: {out / 'embeddings'}")
    return 0


def finish_class(cfg: "RunConfig", sd, c: int, name: str, paths) -> None:
    """After training and evaluation: the token in the embeddings folder, the model card, generated images
    and the full pipeline, as asked."""
    from diffusion import set_token
    from evaluate import generate_dataset
    from report import write_card
    from tokens import load_token, save_embedding
    from workspace import save_full_pipeline

    value = load_token(paths.token, sd, cfg.placeholder_token)
    stamp = paths.owner | dict(disco_class_index=str(c + 1), disco_class_name=name, sd_model=cfg.sd_model)
    save_embedding(paths.embedding, sd, cfg.placeholder_token, value, stamp | dict(disco_family=sd.family.name))
    write_card(cfg, sd, c, name, paths)
    if cfg.generate:
        generate_dataset(cfg, sd, name, paths, Path(cfg.output_path) / "generated" / paths.dir_name)
    if cfg.save_as_full_pipeline:
        set_token(sd, value)  # this class's token in S_c's row
        save_full_pipeline(sd, paths.token_dir / "pipeline")


def close_bars() -> None:
    """Every progress bar still open (an interrupted loop leaves them), closed before the last line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    import torch

    from config import parse_args
    from utils import UsageError

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
        close_bars()
        print("run.py: interrupted; finished classes are kept (resume: --skip_exists True)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    quiet_other_ranks()
    sys.exit(main())
