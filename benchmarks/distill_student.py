"""Distillation: a smaller student trained with the teacher's token distributions vs the same student from scratch.

    python benchmarks/distill_student.py --teachers runs/recipe_2500/seed_{0,1,2}/version_0/checkpoints/best.ckpt \\
        [--seeds 0 1 2] [--config configs/easyvqa.yaml] [--weight 1.0] [--temperature 2.0] \\
        [--student "--model.init_args.decoder.d_model 72 ..."]
    python benchmarks/distill_student.py --config configs/easyvqa_caption.yaml --out runs/distill_caption \\
        --teachers runs/early_exit_caption/seed_{0,1,2}/version_0/checkpoints/best.ckpt   # captions

For each seed N (with the N-th teacher): the teacher's test accuracy (``omnifuse test`` of its checkpoint), then the
recipe with the student's settings trained twice for the same steps, from scratch and with
``distill: {teacher, weight, temperature}`` (fit + test of the best checkpoint, ``benchmarks/recipe_seeds.py``'s
runner). The default student is the recipe at width 72 instead of 128 (decoder, experts and text encoder): under half
the teacher's active parameters (the parameters one token goes through: routed experts counted top_k of n). On the
caption recipe (a ``CaptionTask`` config) the default student is the recipe's 2-layer decoder at width 96, trained
for 8 epochs: 0.49x the active parameters of the 4-layer, width-128 caption models that ``benchmarks/early_exit.py``
trains (8 epochs), which serve as teachers. Prints one table, per seed and median / worst: test accuracy per answer
type (captions: BLEU-4 and ROUGE-L in points, CIDEr-D) for teacher, scratch and distilled, and the parameter counts.
A measured figure, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from recipe_seeds import ANSWER_TYPES, omnifuse_command, parse_test_line, run_seed

STUDENT = (
    "--model.init_args.decoder.d_model 72 --model.init_args.decoder.d_expert 72 "
    "--model.init_args.text_encoder.init_args.d_model 72"
)
CAPTION_STUDENT = "--model.init_args.decoder.d_model 96 --model.init_args.decoder.d_expert 96 --trainer.max_epochs 8"
CAPTION_KEYS = ("bleu4", "rouge_l", "cider_d")  # bleu4 first: the headline, in points like accuracy


def is_caption(config: Path) -> bool:
    """Whether the recipe trains the caption task (its figures are BLEU / ROUGE-L / CIDEr-D, not accuracy)."""
    model = yaml.safe_load(config.read_text()).get("model", {})
    return str(model.get("class_path", "")).endswith("CaptionTask")


def parameter_counts(ckpt: Path) -> tuple[int, int]:
    """(all parameters, active parameters per token) of a checkpoint's model: the active count leaves out the routed
    experts a token does not use (``n_routed_experts - top_k`` of each MoE layer)."""
    from omnifuse.tasks.model import OmniModel

    model = OmniModel.from_pretrained(ckpt)
    total = sum(p.numel() for p in model.parameters())
    cfg = model.decoder_config
    unused = sum(
        (cfg.n_routed_experts - cfg.top_k) * (layer.experts.w_gate[0].numel() * 3) for layer in model.decoder.moe_layers
    )  # each expert: gate, up and down projections of the same size
    return total, total - unused


def teacher_test(command: str, config: Path, teacher: Path, log: Path) -> dict[str, float]:
    """The teacher's test accuracy through ``omnifuse test`` (the same path as the students' final test)."""
    proc = subprocess.run(
        [command, "test", "--config", str(config), "--ckpt_path", str(teacher),
         "--trainer.default_root_dir", str(log.with_suffix(""))],  # its run folder next to the log, not the recipe's
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log.write_text(proc.stdout)
    if proc.returncode:
        raise RuntimeError(f"omnifuse test of {teacher} failed; see {log}")
    found = parse_test_line(proc.stdout)  # the summary line (fit), else Lightning's results table (test)
    for key, value in re.findall(r"test/([\w/]+)\s*│\s*([\d.]+)", proc.stdout):
        found.setdefault("test" if key == "vqa_accuracy" else key.removeprefix("vqa_accuracy/"), float(value))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=[], help="one teacher checkpoint per seed (not with --report)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 .. len(teachers) - 1")
    parser.add_argument("--config", default="configs/easyvqa.yaml", help="the recipe (teacher's and student's)")
    parser.add_argument("--student", default=None, help="omnifuse fit arguments that make the student")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--out", default="runs/distill_student")
    parser.add_argument(
        "--report", action="store_true",
        help="train nothing: print the table from the rows earlier runs saved in OUT/row_N.json (seeds run apart)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else list(range(len(args.teachers)))
    if args.report and not seeds:
        parser.error("--report needs --seeds (the rows to read)")
    if not args.report and (not seeds or len(seeds) != len(args.teachers)):
        parser.error("give one teacher per seed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = omnifuse_command()
    config = Path(args.config)
    caption = is_caption(config)
    args.student = args.student if args.student is not None else (CAPTION_STUDENT if caption else STUDENT)
    student = shlex.split(args.student)
    rows = [json.loads((out / f"row_{seed}.json").read_text()) for seed in seeds] if args.report else []
    for seed, teacher in zip(seeds, args.teachers, strict=True) if not args.report else ():
        teacher = Path(teacher).resolve()
        row = {"seed": seed, "teacher": teacher_test(command, config, teacher, out / f"teacher_{seed}.log")}
        row["scratch"] = run_seed(command, config, seed, out / "scratch", student)
        distill = f"{{teacher: {teacher}, weight: {args.weight}, temperature: {args.temperature}}}"
        row["distilled"] = run_seed(
            command, config, seed, out / "distilled", [*student, "--model.init_args.distill", distill]
        )
        row["params"] = {"teacher": parameter_counts(teacher)}
        for kind in ("scratch", "distilled"):
            best = sorted((out / kind / f"seed_{seed}").glob("version_*/checkpoints/best.ckpt"))
            if best:
                row["params"][kind] = parameter_counts(best[-1])
        rows.append(row)
        (out / f"row_{seed}.json").write_text(json.dumps(row, indent=1))
        print(f"seed {seed}: {row}", flush=True)

    def pct(r: dict, key: str) -> str:  # fractions in points; CIDEr-D (0-10) as it is
        v = r.get(key)
        return f"{'-':>7}" if not isinstance(v, float) else f"{v:7.3f}" if key == "cider_d" else f"{100 * v:7.2f}"

    keys = list(CAPTION_KEYS) if caption else ["test", *ANSWER_TYPES]
    head = keys[0]
    print(f"\ndistillation on {args.config}: student {args.student!r}, weight {args.weight}, T {args.temperature}")
    print(f"{'seed':>4} {'model':10s} " + " ".join(f"{k:>7}" for k in keys) + f" {'params':>11} {'active':>11}")
    for row in rows:
        for kind in ("teacher", "scratch", "distilled"):
            total, active = row["params"].get(kind, (0, 0))
            print(
                f"{row['seed']:>4} {kind:10s} "
                + " ".join(pct(row[kind], k) for k in keys)
                + f" {total:11,} {active:11,}"
            )
    for kind in ("teacher", "scratch", "distilled"):
        for key in keys[: 3 if caption else 1]:
            tests = [r[kind][key] * (1 if key == "cider_d" else 100) for r in rows if key in r[kind]]
            if tests:
                print(
                    f"{kind:10s} {key:8s} median {statistics.median(tests):.2f}, worst {min(tests):.2f} over {len(tests)} seeds"
                )
    gaps = [100 * (r["teacher"][head] - r["distilled"][head]) for r in rows if head in r["distilled"]]
    if gaps:
        print(f"teacher - distilled ({head}): median {statistics.median(gaps):.2f} points, largest {max(gaps):.2f}")
    ahead = [
        100 * (r["distilled"][head] - r["scratch"][head])
        for r in rows
        if head in r["distilled"] and head in r["scratch"]
    ]
    if ahead:
        print(f"distilled - scratch ({head}): median {statistics.median(ahead):.2f} points, smallest {min(ahead):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
