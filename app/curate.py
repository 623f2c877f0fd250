"""``omnifuse curate``: filter a manifest by image-text agreement (CLIP score) and remove near-duplicates.

    omnifuse curate datasets/easyvqa/caption_train.jsonl --out datasets/easyvqa/caption_train_curated.jsonl \\
        --scorer runs/easyvqa_clip/scorer --min-clip-score 0.25 --dedup [--report report.json]

    # with real CLIP weights from a local file (nothing is downloaded):
    omnifuse curate MANIFEST --out CURATED.jsonl --scorer ViT-B-32 --scorer-weights /path/open_clip_model.bin ...

What happens to each record, in this order (the first reason that applies is the one reported):

1. ``invalid``: the line does not parse or fails validation (the usual per-record error, naming the field);
2. ``unreadable``: an image it names cannot be decoded (size limits as everywhere);
3. ``low clip score``: with ``--min-clip-score S``, its image-text pair scores below ``S`` (cosine similarity of the
   scorer's embeddings, in [-1, 1]); with ``--drop-lowest F``, it is among the fraction ``F`` of lowest-scoring pairs.
   The pair's text is the caption (``target``) of a ``caption`` record and the ``text`` of any other
   (``--text-field`` chooses); a record without an image or without that text is not scored;
4. ``--dedup``, among the records still kept (so a group of copies keeps a member that passed the scores):
   ``near-duplicate image``: its image file is a near-duplicate (pHash within ``--dedup-distance`` bits and 8x8
   thumbnails within ``--dedup-pixel-diff``, :mod:`omnifuse.data.dedup`) of a *different* file that an earlier kept record uses (``--dedup-by image``, the
   default; ``--dedup-by content`` keeps such records unless step 4's second rule applies); ``duplicate``: an earlier
   kept record has the same task, image (the same file or a near-duplicate), audio file, text and target.

Each image file is decoded once to find unreadable files and hash it, and once more, batch by batch, for scoring; no
pixels are held beyond a batch, so memory does not grow with the manifest.

Kept records are written to ``--out`` exactly as their lines were (same folder as the manifest, so their relative
paths still resolve); every record, kept or not, is in the report (``--report``, default ``<out>.report.json``) with
its line, reason and score. Nothing is lost silently: ``kept + dropped = records``, printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REASONS = ("invalid", "unreadable", "low clip score", "near-duplicate image", "duplicate")
DEDUP_BY = ("image", "content")


def _pair_text(record, text_field: str) -> str | None:
    if text_field == "target" or (text_field == "auto" and record.task == "caption"):
        value = record.target
    else:
        value = record.text
    return value if isinstance(value, str) and value.strip() else None


def _content_key(record, image_group: str | None) -> str:
    """What makes two records the same example: task, image (its near-duplicate group), audio, text and target."""
    return json.dumps(
        [record.task, image_group, str(record.audio) if record.audio else None, record.text, record.target],
        sort_keys=True,
        ensure_ascii=False,
    )


def load_scorer(name: str, weights: str | None):
    """A scorer folder or contrastive checkpoint (``--scorer PATH``), or an open_clip model name with local weights."""
    from omnifuse.tasks.clip_scorer import ClipScorer

    if Path(name).exists():
        if weights:
            raise ValueError(f"--scorer-weights goes with an open_clip model name; {name} already holds its weights")
        return ClipScorer.from_pretrained(name)
    if not weights:
        raise ValueError(
            f"--scorer {name!r} is neither a scorer folder nor a checkpoint; as an open_clip model name it needs "
            "--scorer-weights FILE (a random model scores nothing)"
        )
    return ClipScorer.from_open_clip(name, weights)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not sys.stderr.isatty(), console=None,
    )  # fmt: skip


def curate(
    manifest: str | Path,
    out: str | Path,
    *,
    report: str | Path | None = None,
    scorer=None,
    min_clip_score: float | None = None,
    drop_lowest: float | None = None,
    dedup: bool = False,
    dedup_distance: int = 6,
    dedup_by: str = "image",
    dedup_pixel_diff: float = 0.013,
    text_field: str = "auto",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Curate ``manifest`` into ``out`` (see the module docstring); returns the report (also written as JSON)."""
    import torch

    from omnifuse.data.dedup import near_duplicate_groups, phash, thumbnail
    from omnifuse.data.loaders import LoadError, decode_image
    from omnifuse.data.records import Record, read_manifest_lines

    manifest, out = Path(manifest), Path(out)
    if out.resolve().parent != manifest.resolve().parent:
        raise ValueError(
            f"--out must be in the manifest's folder ({manifest.resolve().parent}): the kept lines are written as they "
            "are, and their relative paths resolve against that folder"
        )
    if out.resolve() == manifest.resolve():
        raise ValueError("--out must not be the manifest itself")
    if min_clip_score is not None and drop_lowest is not None:
        raise ValueError("give --min-clip-score or --drop-lowest, not both")
    if dedup_by not in DEDUP_BY:
        raise ValueError(f"--dedup-by must be one of {DEDUP_BY}, got {dedup_by!r}")
    if drop_lowest is not None and not 0.0 <= drop_lowest < 1.0:
        raise ValueError(f"--drop-lowest must be in [0, 1), got {drop_lowest}")
    scoring = min_clip_score is not None or drop_lowest is not None
    if scoring and scorer is None:
        raise ValueError("--min-clip-score / --drop-lowest need a --scorer")
    report_path = Path(report) if report is not None else out.with_name(out.name + ".report.json")

    entries = read_manifest_lines(manifest, require_target=False)
    rows: list[dict[str, Any]] = []
    for line_no, _, entry in entries:
        if isinstance(entry, Record):
            rows.append({"id": entry.id, "line": line_no, "kept": True, "reason": None, "score": None})
        else:
            rows.append({"id": entry.record_id, "line": line_no, "kept": False, "reason": "invalid", "score": None,
                         "detail": f"{entry.field}: {entry.reason}"})  # fmt: skip

    def drop(i: int, reason: str, detail: str | None = None) -> None:
        rows[i].update(kept=False, reason=reason)
        if detail:
            rows[i]["detail"] = detail

    def decoded(path: Path):
        """The image, or the reason it cannot be read."""
        try:
            return decode_image(path), None
        except (LoadError, OSError) as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 -- a crafted file can make any decoder step fail
            return None, f"{type(e).__name__}: {e}"

    # 1. Every image file a step needs is decoded once here: unreadable ones are found, hashes taken for --dedup. No
    # pixels are kept (memory stays bounded by one image); scoring decodes its batches again.
    needs_pixels = [
        i for i, (_, _, e) in enumerate(entries)
        if isinstance(e, Record) and e.image is not None
        and (dedup or (scoring and _pair_text(e, text_field) is not None))
    ]  # fmt: skip
    files = list(dict.fromkeys(entries[i][2].image for i in needs_pixels))
    bad_files: dict[Path, str] = {}
    hashes: dict[Path, int] = {}
    thumbs: dict[Path, Any] = {}
    with _progress() as progress:
        task = progress.add_task("reading images", total=len(files))
        for path in files:
            image, fault = decoded(path)
            if fault is not None:
                bad_files[path] = fault
            elif dedup:
                hashes[path], thumbs[path] = phash(image), thumbnail(image)
            progress.advance(task)
    for i in needs_pixels:
        path = entries[i][2].image
        if path in bad_files:
            drop(i, "unreadable", f"image: {bad_files[path]}")

    # 2. Scores first, so that --dedup keeps, of each group, a member that passed them.
    if scoring:
        scored = [
            i for i, (_, _, e) in enumerate(entries)
            if rows[i]["kept"] and e.image is not None and _pair_text(e, text_field) is not None
        ]  # fmt: skip
        scorer.eval()
        with _progress() as progress, torch.no_grad():
            task = progress.add_task("scoring pairs", total=len(scored))
            for start in range(0, len(scored), batch_size):
                chunk = scored[start : start + batch_size]
                batch = {p: decoded(p)[0] for p in dict.fromkeys(entries[i][2].image for i in chunk)}
                images = torch.stack([scorer.preprocess(batch[entries[i][2].image]) for i in chunk])
                texts = [_pair_text(entries[i][2], text_field) for i in chunk]
                for i, s in zip(chunk, scorer.score(images, texts).tolist(), strict=True):
                    rows[i]["score"] = round(float(s), 6)
                progress.advance(task, len(chunk))
        if min_clip_score is not None:
            for i in scored:
                if rows[i]["score"] < min_clip_score:
                    drop(i, "low clip score", f"{rows[i]['score']:.4f} < {min_clip_score}")
        else:
            n_drop = math.floor(drop_lowest * len(scored) + 1e-9)
            lowest = sorted(scored, key=lambda i: (rows[i]["score"], rows[i]["line"]))[:n_drop]
            for i in lowest:
                drop(i, "low clip score", f"among the lowest {drop_lowest:.0%} of {len(scored)} scored pairs")

    # 3. Duplicates among the records still kept. Groups of near-duplicate files are formed in order of first use by
    # a kept record, so a group's first file always has a kept user when a later member is met.
    if dedup:
        used = list(dict.fromkeys(
            e.image for i, (_, _, e) in enumerate(entries) if rows[i]["kept"] and e.image in hashes
        ))  # fmt: skip
        groups = near_duplicate_groups(
            [hashes[p] for p in used], dedup_distance, [thumbs[p] for p in used], dedup_pixel_diff
        )
        representative = {p: (used[r], d) for p, (r, d) in zip(used, groups, strict=True)}
        first_user: dict[Path, str] = {}  # a group's first file -> the first kept record using it
        seen: dict[str, str] = {}  # content key -> first kept record id
        for i, (_, _, e) in enumerate(entries):
            if not rows[i]["kept"]:
                continue
            group = None
            if e.image is not None and e.image in representative:
                rep, distance = representative[e.image]
                if rep != e.image and dedup_by == "image":
                    drop(i, "near-duplicate image",
                         f"image is {distance} bits from {rep.name} (record {first_user[rep]!r})")  # fmt: skip
                    continue
                first_user.setdefault(rep, e.id)
                group = str(rep)
            key = _content_key(e, group)
            if key in seen:
                drop(i, "duplicate", f"same task, image, audio, text and target as record {seen[key]!r}")
                continue
            seen[key] = e.id

    kept_lines = [text for (_, text, _), row in zip(entries, rows, strict=True) if row["kept"]]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept_lines), encoding="utf-8")
    os.replace(tmp, out)
    scores = [r["score"] for r in rows if r["score"] is not None]
    summary = {
        "records": len(rows),
        "kept": len(kept_lines),
        "dropped": dict(Counter(r["reason"] for r in rows if not r["kept"])),
        "scored": len(scores),
        "score": {"min": min(scores), "median": statistics.median(scores), "max": max(scores)} if scores else None,
    }
    result = {
        "manifest": str(manifest),
        "out": str(out),
        "settings": {
            "min_clip_score": min_clip_score,
            "drop_lowest": drop_lowest,
            "dedup": dedup,
            "dedup_distance": dedup_distance,
            "dedup_pixel_diff": dedup_pixel_diff,
            "dedup_by": dedup_by,
            "text_field": text_field,
        },
        "summary": summary,
        "records": rows,
    }
    report_path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    result["report"] = str(report_path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnifuse curate", description=main.__doc__)
    parser.add_argument("manifest", help="JSONL manifest to curate")
    parser.add_argument("--out", required=True, help="curated manifest (kept lines, unchanged), beside the manifest")
    parser.add_argument("--report", help="JSON report of every record (default: <out>.report.json)")
    parser.add_argument("--scorer", help="scorer folder (omnifuse export of a contrastive checkpoint), a contrastive "
                        ".ckpt, or an open_clip model name with --scorer-weights")  # fmt: skip
    parser.add_argument("--scorer-weights", help="local open_clip weights file for --scorer MODEL_NAME")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--min-clip-score", type=float, help="drop image-text pairs scoring below this (cosine)")
    threshold.add_argument("--drop-lowest", type=float, help="drop this fraction of lowest-scoring pairs")
    parser.add_argument("--dedup", action="store_true", help="drop near-duplicate images and duplicate records")
    parser.add_argument("--dedup-distance", type=int, default=6, help="pHash bits (of 64) within which two images are "
                        "near-duplicates (default 6)")  # fmt: skip
    parser.add_argument("--dedup-pixel-diff", type=float, default=0.013, help="and whose 8x8 RGB thumbnails differ by "
                        "at most this mean absolute difference (of the full range; default 0.013)")  # fmt: skip
    parser.add_argument("--dedup-by", choices=DEDUP_BY, default="image",
                        help="image: drop every record of a near-duplicate file (its copy of the content); content: "
                        "near-duplicate files count as one image, and only records equal in task, image, audio, text "
                        "and target are dropped (keeps the other questions asked about a copy)")  # fmt: skip
    parser.add_argument("--text-field", choices=["auto", "target", "text"], default="auto",
                        help="the pair's text: auto = target for caption records, text otherwise")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    def refuse(message: str) -> int:
        print(f"omnifuse curate: {message}", file=sys.stderr)
        return 2

    if not Path(args.manifest).is_file():
        return refuse(f"no manifest at {args.manifest}")
    if args.min_clip_score is None and args.drop_lowest is None and not args.dedup:
        return refuse("nothing to do: give --min-clip-score or --drop-lowest (with --scorer) and/or --dedup")
    try:
        scorer = load_scorer(args.scorer, args.scorer_weights) if args.scorer else None
        result = curate(
            args.manifest, args.out, report=args.report, scorer=scorer, min_clip_score=args.min_clip_score,
            drop_lowest=args.drop_lowest, dedup=args.dedup, dedup_distance=args.dedup_distance, dedup_by=args.dedup_by,
            dedup_pixel_diff=args.dedup_pixel_diff,
            text_field=args.text_field, batch_size=args.batch_size,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as error:
        return refuse(str(error))
    s = result["summary"]
    print(f"omnifuse curate: {s['records']} records -> {s['kept']} kept ({result['out']})")
    for reason in REASONS:
        if reason in s["dropped"]:
            print(f"  dropped, {reason:22s} {s['dropped'][reason]:>8d}")
    if s["score"]:
        sc = s["score"]
        print(
            f"  clip score of {s['scored']} pairs: min {sc['min']:.4f}, median {sc['median']:.4f}, max {sc['max']:.4f}"
        )
    print(f"  every record with its reason and score: {result['report']}")
    return 0


main.__doc__ = "Filter a manifest by CLIP score and remove near-duplicates; every record is kept or reported."

if __name__ == "__main__":
    sys.exit(main())
