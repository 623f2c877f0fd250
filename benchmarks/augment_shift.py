"""Label-safe augmentation (``data.augment``) against none, on the test split as shipped and under distribution shifts.

    python benchmarks/augment_shift.py --ckpts runs/augment/seed_{0,1,2}/version_0/checkpoints/best.ckpt \\
        --baseline runs/recipe_earlystop/seed_{0,1,2}/version_0/checkpoints/best.ckpt

The shifted test sets are built here, deterministically, from the official test split (same questions, same answers,
only the pixels change), and written beside it (``datasets/easyvqa/shifted/``):

* ``jpeg30``: every test image re-encoded as JPEG at quality 30 (blocking and colour bleeding);
* ``shift3``: every test image moved 3 pixels right and 3 down, the uncovered border filled with the image's own edge
  pixels (not black: a black border is what ``augment.translate`` trains with, and it would favour the augmented
  models);
* ``dim``: brightness x0.7 and contrast x0.7 (torchvision's ``adjust_brightness`` / ``adjust_contrast``), inside the
  range ``augment.brightness/contrast: 0.3`` trains with: the shift augmentation is meant for.

Each checkpoint runs through the batch job (``Predictor``, greedy, 12 new tokens) on the clean test split and on each
shifted one. Prints accuracy per checkpoint and per condition, then median / worst per group. Measured, never
pass/fail; the augmentation settings were fixed before any test set was looked at.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptive_routing import OWN, build, evaluate  # noqa: E402

SHIFTS = ("jpeg30", "shift3", "dim")
SHIFT_PIXELS = 3


def shifted_image(image: Image.Image, kind: str) -> tuple[Image.Image, str]:
    """``image`` under the shift ``kind`` and the file suffix to save it with."""
    import torchvision.transforms.functional as F

    image = image.convert("RGB")
    if kind == "jpeg30":
        return image, ".jpg"
    if kind == "shift3":
        w, h = image.size
        d = SHIFT_PIXELS
        out = image.transform((w, h), Image.Transform.AFFINE, (1, 0, -d, 0, 1, -d), resample=Image.Resampling.NEAREST)
        # fill the uncovered top rows / left columns with the original's edge pixels (replicate padding)
        pixels = out.load()
        src = image.load()
        for y in range(h):
            for x in range(w):
                if x < d or y < d:
                    pixels[x, y] = src[max(0, x - d), max(0, y - d)]
        return out, ".png"
    if kind == "dim":
        return F.adjust_contrast(F.adjust_brightness(image, 0.7), 0.7), ".png"
    raise ValueError(f"unknown shift {kind!r}")


def build_shifted(manifest: Path, kind: str) -> Path:
    """The test manifest with every image replaced by its shifted copy (written once, reused afterwards)."""
    root = manifest.parent
    out_manifest = root / f"{manifest.stem}_{kind}.jsonl"
    if out_manifest.exists():
        return out_manifest
    lines = []
    done: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        image = row["image"]
        if image not in done:
            image_out, suffix = shifted_image(Image.open(root / image), kind)
            rel = Path("shifted") / kind / Path(image).with_suffix(suffix)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".jpg":
                image_out.save(root / rel, quality=30)
            else:
                image_out.save(root / rel)
            done[image] = str(rel)
        row["image"] = done[image]
        lines.append(json.dumps(row))
    tmp = out_manifest.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out_manifest)
    return out_manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpts", nargs="*", default=[], help="checkpoints trained with data.augment, one per seed")
    parser.add_argument("--baseline", nargs="*", default=[], help="the same recipe without augmentation")
    parser.add_argument("--test", default="datasets/easyvqa/vqa_test.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="the first N test records (a quick look)")
    args = parser.parse_args(argv)
    test = Path(args.test)
    manifests = {"clean": test, **{kind: build_shifted(test, kind) for kind in SHIFTS}}
    conditions = list(manifests)

    results: dict[str, list[dict]] = {"augmented": [], "baseline": []}
    for group, ckpts in (("baseline", args.baseline), ("augmented", args.ckpts)):
        for ckpt in ckpts:
            model = build(Path(ckpt), OWN)
            row = {c: evaluate(model, manifests[c], limit=args.limit) for c in conditions}
            results[group].append(row)
            print(
                f"{group:9s} {ckpt}: "
                + ", ".join(f"{c} {row[c]['accuracy']:.2f} (yes/no {row[c].get('accuracy/yes/no', 0):.2f})" for c in conditions),
                flush=True,
            )  # fmt: skip

    print(f"\ntest accuracy %, median / worst over {len(args.ckpts)} augmented and {len(args.baseline)} plain seeds")
    print(f"{'condition':10s} {'plain':>16s} {'augmented':>16s}")
    for c in conditions:
        cells = []
        for group in ("baseline", "augmented"):
            values = [r[c]["accuracy"] for r in results[group]]
            cells.append(f"{statistics.median(values):7.2f} / {min(values):6.2f}" if values else "-")
        print(f"{c:10s} {cells[0]:>16s} {cells[1]:>16s}")


if __name__ == "__main__":
    main()
