"""How well ``omnifuse curate`` separates good records from bad ones on easy-VQA captions: CLIP-score filtering of
swapped captions, and near-duplicate removal of injected copies; plus the scorer's retrieval recall.

    omnifuse fit --config configs/easyvqa_clip.yaml
    omnifuse export runs/easyvqa_clip/latest/checkpoints/best.ckpt --out runs/easyvqa_clip/scorer
    python benchmarks/curate_quality.py --scorer runs/easyvqa_clip/scorer [--fraction 0.2] [--seed 0]

1. Retrieval: recall@1/@5 image->text and text->image over the 1,000 test images and their captions.
2. Swapped captions: in a copy of the validation and of the test caption manifest, ``--fraction`` of the records get
   the caption of another image that shows a different scene (so the pair is truly wrong). The ``--min-clip-score``
   threshold is chosen on the validation copy alone (the one that maximises the mean of "mismatched removed" and
   "true kept"); the test copy is then curated with it through ``omnifuse curate``, and with ``--drop-lowest
   FRACTION`` (the fraction known to be swapped). Printed: mismatched pairs removed and true pairs kept, in %.
3. Near-duplicates: a copy of the test manifest plus one injected copy for 10 % of its images, half re-encoded as
   JPEG (quality 50), half resized to 56x56; each copy's record carries another phrasing of the caption, so only
   the image can give it away. ``omnifuse curate --dedup``: recall and precision of the removed set against the
   injected records. The thumbnail threshold (``--dedup-pixel-diff``) is chosen on copies injected into the
   validation images, never on the test split.

Files go under the dataset folder (the manifests' paths must stay inside it): ``<dataset>/curate_bench/``.
A measured table, never pass/fail.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import torch
from PIL import Image


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def swap_captions(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], set[str]]:
    """``rows`` with ``fraction`` of them given another record's caption of a different scene; the swapped ids."""
    rng = random.Random(seed)
    chosen = rng.sample(range(len(rows)), round(fraction * len(rows)))
    out = [dict(r) for r in rows]
    for i in chosen:
        while True:
            j = rng.randrange(len(rows))
            if rows[j]["target"] != rows[i]["target"]:
                break
        out[i]["target"] = rows[j]["target"]
        out[i]["meta"] = {**rows[i].get("meta", {}), "references": [rows[j]["target"]], "swapped_from": rows[j]["id"]}
    return out, {rows[i]["id"] for i in chosen}


def curate_run(manifest: Path, out: Path, *args: str) -> dict:
    from omnifuse.app.curate import main as curate_main

    code = curate_main([str(manifest), "--out", str(out), *args])
    if code:
        raise RuntimeError(f"omnifuse curate {manifest} failed ({code})")
    return json.loads(Path(str(out) + ".report.json").read_text())


def separation(report: dict, bad: set[str]) -> tuple[float, float]:
    """(% of ``bad`` records dropped, % of the other records kept)."""
    rows = report["records"]
    bad_rows = [r for r in rows if r["id"] in bad]
    good_rows = [r for r in rows if r["id"] not in bad]
    return (100 * sum(not r["kept"] for r in bad_rows) / max(1, len(bad_rows)),
            100 * sum(r["kept"] for r in good_rows) / max(1, len(good_rows)))  # fmt: skip


def choose_threshold(report: dict, bad: set[str]) -> float:
    """The score threshold that maximises the mean of "bad removed" and "good kept" on a scored report."""
    scored = sorted((r["score"], r["id"] in bad) for r in report["records"] if r["score"] is not None)
    n_bad = sum(b for _, b in scored)
    n_good = len(scored) - n_bad
    best, best_t, below_bad, below_good = -1.0, scored[0][0], 0, 0
    for k in range(len(scored) + 1):  # threshold between scored[k-1] and scored[k]: the first k are dropped
        value = 0.5 * (below_bad / max(1, n_bad) + (n_good - below_good) / max(1, n_good))
        if value > best:
            lo = scored[k - 1][0] if k else scored[0][0] - 1e-3
            hi = scored[k][0] if k < len(scored) else scored[-1][0] + 1e-3
            best, best_t = value, (lo + hi) / 2
        if k < len(scored):
            below_bad += scored[k][1]
            below_good += not scored[k][1]
    return best_t


def inject_copies(rows: list[dict], folder: Path, root: Path, seed: int) -> tuple[list[dict], set[str]]:
    """``rows`` plus a near-copy of 10 % of their images (JPEG q50 or resized to 56x56), each with a record that uses
    another phrasing of the caption; returns the rows and the injected ids."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = rng.sample(range(len(rows)), len(rows) // 10)
    extra, injected = [], set()
    for n, i in enumerate(chosen):
        row = rows[i]
        image = Image.open(root / row["image"]).convert("RGB")
        if n % 2 == 0:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=50)
            name = f"copy_{n:04d}.jpg"
            (folder / name).write_bytes(buffer.getvalue())
        else:
            name = f"copy_{n:04d}.png"
            image.resize((56, 56), Image.BICUBIC).save(folder / name)
        references = row.get("meta", {}).get("references") or [row["target"]]
        record = {**row, "id": f"{row['id']}-copy", "image": str((folder / name).relative_to(root)),
                  "target": references[min(2, len(references) - 1)]}  # fmt: skip
        extra.append(record)
        injected.add(record["id"])
    mixed = list(rows)
    for record in extra:  # each copy somewhere after its original (curate keeps the first of a group)
        j = next(k for k, r in enumerate(mixed) if r["id"] == record["id"].removesuffix("-copy"))
        mixed.insert(rng.randint(j + 1, len(mixed)), record)
    return mixed, injected


def choose_pixel_diff(rows: list[dict], folder: Path, root: Path, seed: int, max_distance: int) -> float:
    """The thumbnail threshold, from validation data alone: copies are injected into the validation images; the
    threshold is halfway between the largest difference of a copy from its original and the smallest difference of
    two distinct images within ``max_distance`` pHash bits (or, if those overlap, the largest copy difference)."""
    from omnifuse.data.dedup import hamming, phash, thumbnail

    dup_rows, injected = inject_copies(rows, folder, root, seed)
    by_id = {r["id"]: r for r in dup_rows}
    images = {r["image"]: Image.open(root / r["image"]).convert("RGB") for r in dup_rows}
    hashes = {p: phash(im) for p, im in images.items()}
    thumbs = {p: thumbnail(im) for p, im in images.items()}
    copies = [float(abs(thumbs[by_id[i]["image"]] - thumbs[by_id[i.removesuffix("-copy")]["image"]]).mean())
              for i in injected]  # fmt: skip
    originals = list(dict.fromkeys(r["image"] for r in rows))
    distinct = [float(abs(thumbs[a] - thumbs[b]).mean()) for n, a in enumerate(originals) for b in originals[n + 1 :]
                if hamming(hashes[a], hashes[b]) <= max_distance]  # fmt: skip
    top, bottom = max(copies), min(distinct, default=float("inf"))
    chosen = (top + bottom) / 2 if bottom > top and bottom != float("inf") else top
    print(f"validation: {len(copies)} injected copies differ from their originals by <= {top:.4f}; {len(distinct)} "
          f"pairs of distinct images within {max_distance} bits differ by >= {bottom:.4f}: --dedup-pixel-diff "
          f"{chosen:.4f}")  # fmt: skip
    return round(chosen, 4)


def recall(scorer, rows: list[dict], root: Path) -> dict[str, float]:
    from omnifuse.data.loaders import decode_image
    from omnifuse.tasks.contrastive import retrieval_recall

    images, texts = [], []
    with torch.no_grad():
        for start in range(0, len(rows), 128):
            chunk = rows[start : start + 128]
            batch = torch.stack([scorer.preprocess(decode_image(root / r["image"])) for r in chunk])
            images.append(scorer.embed_images(batch))
            texts.append(scorer.embed_texts([r["target"] for r in chunk]))
    return retrieval_recall(torch.cat(images), torch.cat(texts), [r["target"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", required=True, help="scorer folder (omnifuse export of the contrastive checkpoint)")
    parser.add_argument("--dataset", default="datasets/easyvqa")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dedup-distance", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from omnifuse.tasks.clip_scorer import ClipScorer

    root = Path(args.dataset)
    bench = root / "curate_bench"
    bench.mkdir(exist_ok=True)
    scorer = ClipScorer.from_pretrained(args.scorer)
    test_rows = read(root / "caption_test.jsonl")
    val_rows = read(root / "caption_val.jsonl")

    r = recall(scorer, test_rows, root)
    print(f"retrieval on {len(test_rows)} test images: image->text R@1 {100 * r['recall_i2t@1']:.1f} %, "
          f"R@5 {100 * r['recall_i2t@5']:.1f} %; text->image R@1 {100 * r['recall_t2i@1']:.1f} %, "
          f"R@5 {100 * r['recall_t2i@5']:.1f} %")  # fmt: skip

    val_swapped, val_bad = swap_captions(val_rows, args.fraction, args.seed)
    write(root / "curate_bench_val_swapped.jsonl", val_swapped)
    report = curate_run(root / "curate_bench_val_swapped.jsonl", root / "curate_bench_val_curated.jsonl",
                        "--scorer", args.scorer, "--min-clip-score", "-1")  # fmt: skip
    threshold = choose_threshold(report, val_bad)
    test_swapped, test_bad = swap_captions(test_rows, args.fraction, args.seed + 1)
    write(root / "curate_bench_test_swapped.jsonl", test_swapped)
    results = []
    for label, flags in ((f"--min-clip-score {threshold:.4f} (chosen on val)", ["--min-clip-score", f"{threshold}"]),
                         (f"--drop-lowest {args.fraction}", ["--drop-lowest", f"{args.fraction}"])):  # fmt: skip
        report = curate_run(root / "curate_bench_test_swapped.jsonl", root / "curate_bench_test_curated.jsonl",
                            "--scorer", args.scorer, *flags)  # fmt: skip
        results.append((label, *separation(report, test_bad)))

    pixel_diff = choose_pixel_diff(val_rows, bench / "val", root, args.seed, args.dedup_distance)
    dup_rows, injected = inject_copies(test_rows, bench / "test", root, args.seed)
    write(root / "curate_bench_test_dups.jsonl", dup_rows)
    report = curate_run(root / "curate_bench_test_dups.jsonl", root / "curate_bench_test_dedup.jsonl", "--dedup",
                        "--dedup-distance", str(args.dedup_distance), "--dedup-pixel-diff", f"{pixel_diff}")  # fmt: skip
    removed = {r["id"] for r in report["records"] if not r["kept"]}
    dedup_recall = 100 * len(removed & injected) / max(1, len(injected))
    dedup_precision = 100 * len(removed & injected) / max(1, len(removed))

    print(f"\nswapped captions: {len(test_bad)} of {len(test_rows)} test records ({args.fraction:.0%}) carry another "
          "scene's caption")  # fmt: skip
    print(f"{'setting':48s} {'mismatched removed':>19s} {'true pairs kept':>16s}")
    for label, removed_pct, kept_pct in results:
        print(f"{label:48s} {removed_pct:18.1f}% {kept_pct:15.1f}%")
    print(
        f"\nnear-duplicates: {len(injected)} injected copies (JPEG q50 / resized 56x56) among {len(dup_rows)} records"
    )
    label = f"--dedup-distance {args.dedup_distance} --dedup-pixel-diff {pixel_diff:.4f} (chosen on val)"
    print(f"{label:48s} recall {dedup_recall:.1f} %, precision {dedup_precision:.1f} % ({len(removed)} removed)")


if __name__ == "__main__":
    main()
