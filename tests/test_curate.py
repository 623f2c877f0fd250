"""Data curation: pHash against a plain-loop DCT, near-duplicate grouping against brute force, CLIP scores against
open_clip's own preprocessing and encoders, retrieval recall against a plain loop, the contrastive recipe end to end
(fit -> export -> curate), and ``omnifuse curate`` keeping or reporting every record."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw
from torch.testing import assert_close

from omnifuse.app.cli import cli_main
from omnifuse.app.cli import main as omnifuse
from omnifuse.app.curate import curate
from omnifuse.data.dedup import hamming, near_duplicate_groups, phash, thumbnail
from omnifuse.data.loaders import decode_image
from omnifuse.tasks.clip_scorer import ClipScorer
from omnifuse.tasks.contrastive import retrieval_recall

TINY_SCORER = dict(
    embed_dim=32,
    vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    text_cfg={"context_length": 16, "width": 32, "heads": 2, "layers": 1},
)
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}
# (caption, colour, shape, top-left corner) of 32x32 scenes that differ in colour, shape and place.
SCENES = [
    ("a red square on the left", "red", "square", (2, 10)),
    ("a blue circle on the right", "blue", "circle", (18, 10)),
    ("a green square at the top", "green", "square", (10, 1)),
    ("a yellow circle at the bottom", "yellow", "circle", (10, 19)),
]


def draw(colour: str, shape: str, corner, size: int = 32) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    x, y = corner
    (ImageDraw.Draw(img).rectangle if shape == "square" else ImageDraw.Draw(img).ellipse)(
        (x, y, x + 12, y + 12), fill=COLOURS[colour]
    )
    return img


def tiny_scorer(seed: int = 0) -> ClipScorer:
    torch.manual_seed(seed)
    return ClipScorer.from_open_clip("ViT-B-32", None, **TINY_SCORER)


# ------------------------------------------------------------------------------------------------ pHash


def reference_phash(image: Image.Image) -> int:
    """pHash from its definition, with plain loops: 32x32 grayscale, DCT-II of columns then rows, 8x8 low corner,
    bits above the median."""
    gray = image.convert("L").resize((32, 32), Image.LANCZOS)
    x = [[float(gray.getpixel((c, r))) for c in range(32)] for r in range(32)]

    def dct(v):
        n = len(v)
        return [2 * sum(v[j] * math.cos(math.pi * k * (2 * j + 1) / (2 * n)) for j in range(n)) for k in range(n)]

    cols = [dct([x[r][c] for r in range(32)]) for c in range(32)]  # cols[c][k]: column c transformed
    coeff = [dct([cols[c][k] for c in range(32)]) for k in range(32)]  # coeff[k][l]: row k of that, transformed
    low = [coeff[k][lo] for k in range(8) for lo in range(8)]
    median = sorted(low)[31] / 2 + sorted(low)[32] / 2
    return sum(1 << i for i, v in enumerate(low) if v > median)


@pytest.mark.parametrize("seed", [0, 1])
def test_phash_matches_a_plain_loop_reference(seed):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    assert phash(image) == reference_phash(image)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert phash(tensor) == phash(image)


def test_phash_survives_reencoding_and_resizing_and_separates_different_scenes():
    images = [draw(colour, shape, corner) for _, colour, shape, corner in SCENES]
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=40)
        jpeg = Image.open(io.BytesIO(buffer.getvalue()))
        assert hamming(phash(image), phash(jpeg)) <= 6
        assert hamming(phash(image), phash(image.resize((28, 28), Image.BILINEAR))) <= 6
    distances = [hamming(phash(a), phash(b)) for i, a in enumerate(images) for b in images[i + 1 :]]
    assert min(distances) > 6


def test_near_duplicate_groups_equal_a_brute_force_loop():
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(60)]
    hashes += [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in hashes[:20]]  # near copies
    order = list(range(len(hashes)))
    rng.shuffle(order)
    hashes = [hashes[i] for i in order]
    gen = np.random.default_rng(0)
    thumbs = [gen.random((8, 8, 3), dtype=np.float32) * 0.05 for _ in hashes]  # close or not: diffs around 0.017
    for max_distance, max_diff in ((0, None), (2, None), (5, None), (5, 0.017)):
        expected, reps = [], []
        for i, h in enumerate(hashes):
            match = next(
                (j for j in reps if hamming(hashes[j], h) <= max_distance
                 and (max_diff is None or np.abs(thumbs[i] - thumbs[j]).mean() <= max_diff)),
                None,
            )  # fmt: skip
            if match is None:
                reps.append(i)
                expected.append((i, 0))
            else:
                expected.append((match, hamming(hashes[match], h)))
        given = (thumbs, max_diff) if max_diff is not None else ()
        assert near_duplicate_groups(hashes, max_distance, *given) == expected


def test_thumbnail_check_tells_a_copy_from_another_colour_in_the_same_place():
    red, green = draw("red", "square", (2, 10)), draw("green", "square", (2, 10))
    buffer = io.BytesIO()
    red.save(buffer, format="JPEG", quality=50)
    copy = Image.open(io.BytesIO(buffer.getvalue()))
    hashes = [phash(im) for im in (red, green, copy)]
    assert hamming(hashes[0], hashes[1]) <= 6  # the hash alone cannot tell the colours apart ...
    thumbs = [thumbnail(im) for im in (red, green, copy)]
    assert near_duplicate_groups(hashes, 6, thumbs, 0.013) == [(0, 0), (1, 0), (0, hamming(hashes[0], hashes[2]))]


# ------------------------------------------------------------------------------------------------ scores


def test_clip_score_equals_open_clip_preprocessing_and_encoders(tmp_path):
    scorer = tiny_scorer()
    transform = open_clip.image_transform(32, is_train=False)  # open_clip's own eval transform (PIL -> tensor)
    images = [draw(colour, shape, corner) for _, colour, shape, corner in SCENES]
    texts = [caption for caption, *_ in SCENES]
    with torch.no_grad():
        ref_img = scorer.clip.encode_image(torch.stack([transform(im) for im in images]))
        ref_txt = scorer.clip.encode_text(open_clip.get_tokenizer("ViT-B-32", context_length=16)(texts))
        expected = torch.nn.functional.cosine_similarity(ref_img, ref_txt)
    ours = scorer.score(
        torch.stack([scorer.preprocess(torch.from_numpy(np.array(im)).permute(2, 0, 1)) for im in images]), texts
    )
    assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    # A larger, non-square image goes through the same resize + centre crop (bicubic: PIL and torch differ slightly).
    big = draw("red", "square", (2, 10), size=32).resize((48, 40), Image.BICUBIC)
    with torch.no_grad():
        ref = scorer.clip.encode_image(transform(big)[None])
        mine = scorer.clip.encode_image(
            scorer.normalize(scorer.preprocess(torch.from_numpy(np.array(big)).permute(2, 0, 1))[None])
        )
    assert torch.nn.functional.cosine_similarity(ref, mine).item() > 0.99


def test_retrieval_recall_equals_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=-1)
    text_emb = torch.nn.functional.normalize(image_emb + 0.8 * torch.randn(12, 8, generator=g), dim=-1)
    texts = [f"caption {i % 9}" for i in range(12)]  # three captions shared by two images each
    got = retrieval_recall(image_emb, text_emb, texts, ks=(1, 5))
    sim = (image_emb @ text_emb.t()).tolist()
    for k in (1, 5):
        i2t = [any(texts[j] == texts[i] for j in sorted(range(12), key=lambda j: -sim[i][j])[:k]) for i in range(12)]
        t2i = [any(texts[j] == texts[i] for j in sorted(range(12), key=lambda j: -sim[j][i])[:k]) for i in range(12)]
        assert got[f"recall_i2t@{k}"] == pytest.approx(sum(i2t) / 12)
        assert got[f"recall_t2i@{k}"] == pytest.approx(sum(t2i) / 12)


# ------------------------------------------------------------------------------------------------ curate


def _parsed(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def write_dataset(folder: Path) -> Path:
    """A caption manifest with every kind of record curate must handle; returns its path."""
    images = folder / "images"
    images.mkdir(parents=True)
    rows = []
    for i, (caption, colour, shape, corner) in enumerate(SCENES):
        draw(colour, shape, corner).save(images / f"{i}.png")
        rows.append({"id": f"c{i}", "task": "caption", "image": f"images/{i}.png", "target": caption})
    buffer = io.BytesIO()
    draw(*SCENES[1][1:]).save(buffer, format="JPEG", quality=50)
    (images / "copy_of_1.jpg").write_bytes(buffer.getvalue())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    rows += [
        {"id": "copy", "task": "caption", "image": "images/copy_of_1.jpg", "target": SCENES[1][0]},  # near-dup
        {"id": "again", "task": "caption", "image": "images/0.png", "target": SCENES[0][0]},  # exact duplicate
        {"id": "other-caption", "task": "caption", "image": "images/0.png", "target": "a square in red"},
        {"id": "broken", "task": "caption", "image": "images/broken.png", "target": "a picture"},
        {"id": "missing", "task": "caption", "image": "images/nowhere.png", "target": "a picture"},
        {"id": "text-only", "task": "vqa", "text": "is there a shape?", "target": "yes"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, '{"id": "not json", ')
    path = folder / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_curate_keeps_or_reports_every_record_with_its_reason(tmp_path):
    manifest = write_dataset(tmp_path)
    out = tmp_path / "curated.jsonl"
    input_lines = [line for line in manifest.read_text().splitlines() if line.strip()]
    good = {r["id"]: (line, r) for line in input_lines if (r := _parsed(line)) is not None}

    # Duplicates alone: the JPEG copy of c1's image and a repeat of c0's record go, with the record they repeat.
    result = curate(manifest, out, dedup=True)
    rows = {r["id"]: r for r in result["records"]}
    assert len(result["records"]) == len(input_lines) == result["summary"]["records"]
    assert rows["line 4"]["reason"] == "invalid" and "<json>" in rows["line 4"]["detail"]
    assert rows["missing"]["reason"] == "invalid" and rows["missing"]["detail"].startswith("image:")
    assert rows["broken"]["reason"] == "unreadable" and rows["broken"]["detail"].startswith("image:")
    assert rows["copy"]["reason"] == "near-duplicate image" and "'c1'" in rows["copy"]["detail"]
    assert rows["again"]["reason"] == "duplicate" and "'c0'" in rows["again"]["detail"]
    assert all(rows[i]["kept"] for i in ("c0", "c1", "c2", "c3", "other-caption", "text-only"))
    # The curated manifest holds the kept lines exactly as they were, in order; kept + dropped = all.
    assert out.read_text().splitlines() == [line for i, (line, _) in good.items() if rows[i]["kept"]]
    assert result["summary"]["kept"] + sum(result["summary"]["dropped"].values()) == len(input_lines)
    assert json.loads(Path(result["report"]).read_text())["records"] == result["records"]
    # --dedup-by content: the copy names the same image as c1 with the same caption, so it is still a duplicate.
    rows = {r["id"]: r for r in curate(manifest, out, dedup=True, dedup_by="content")["records"]}
    assert rows["copy"]["reason"] == "duplicate" and "'c1'" in rows["copy"]["detail"]

    # Scores alone: --drop-lowest 0.25 of the 7 readable image-text pairs drops floor(1.75) = 1, the lowest by scores
    # computed here independently.
    scorer = tiny_scorer()
    rows = {r["id"]: r for r in curate(manifest, out, scorer=scorer, drop_lowest=0.25)["records"]}
    pairs = ["c0", "c1", "c2", "c3", "copy", "again", "other-caption"]
    images = torch.stack([scorer.preprocess(decode_image(tmp_path / good[p][1]["image"])) for p in pairs])
    scores = dict(zip(pairs, scorer.score(images, [good[p][1]["target"] for p in pairs]).tolist(), strict=True))
    assert [i for i, r in rows.items() if r["reason"] == "low clip score"] == [min(pairs, key=scores.get)]
    for p in pairs:
        assert rows[p]["score"] == pytest.approx(scores[p], abs=1e-5)
    assert rows["text-only"]["kept"] and rows["text-only"]["score"] is None  # no image: never scored


class _ScoresByText:
    """A stand-in scorer with a fixed score per text (what is tested is the order of the steps, not a model)."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def eval(self):
        return self

    def preprocess(self, image):
        return image.float()[:, :4, :4]

    def score(self, images, texts):
        return torch.tensor([self.scores.get(t, 1.0) for t in texts])


def test_scores_come_before_dedup_so_a_group_keeps_a_member_that_passed(tmp_path):
    manifest = write_dataset(tmp_path)
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if _parsed(line)]
    rows = [dict(r, target="a blue circle at the right") if r["id"] == "copy" else r for r in rows]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = _ScoresByText({SCENES[1][0]: 0.1})  # c1's own pair scores low; its copy's phrasing scores high
    result = curate(manifest, tmp_path / "curated.jsonl", scorer=scorer, min_clip_score=0.5, dedup=True)
    by_id = {r["id"]: r for r in result["records"]}
    assert by_id["c1"]["reason"] == "low clip score"
    assert by_id["copy"]["kept"]  # the group's member that passed the score stands for it


def test_curate_command_refuses_unusable_settings_with_one_line(tmp_path, capsys):
    manifest = write_dataset(tmp_path)
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    assert omnifuse(["curate", str(manifest), "--out", str(elsewhere / "c.jsonl"), "--dedup"]) == 2
    assert "manifest's folder" in capsys.readouterr().err
    assert omnifuse(["curate", str(manifest), "--out", str(tmp_path / "c.jsonl"), "--drop-lowest", "0.1"]) == 2
    assert "need a --scorer" in capsys.readouterr().err
    assert omnifuse(["curate", str(manifest), "--out", str(tmp_path / "c.jsonl"), "--min-clip-score", "0.1",
                     "--scorer", "ViT-B-32"]) == 2  # fmt: skip
    assert "--scorer-weights" in capsys.readouterr().err
    assert omnifuse(["curate", str(manifest), "--out", str(tmp_path / "c.jsonl"), "--dedup"]) == 0
    printed = capsys.readouterr().out
    assert "near-duplicate image" in printed and "records ->" in printed


# ------------------------------------------------------------------------------------------------ the recipe


def _clip_config(tmp_path: Path, manifest: Path) -> Path:
    root = tmp_path / "run"
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 60, "log_every_n_steps": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(root), "check_val_every_n_epoch": 15,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"filename": "best", "monitor": "val/recall_mean", "mode": "max"}}],
        },
        "model": {
            "class_path": "omnifuse.tasks.contrastive.ContrastiveTask",
            "init_args": {"scorer": {"model_name": "ViT-B-32", **TINY_SCORER},
                          "optimizer": {"lr": 0.003, "warmup_steps": 5}},
        },
        "data": {"train_manifest": str(manifest), "val_manifest": str(manifest), "test_manifest": str(manifest),
                 "batch_size": 4, "image_size": 32},
    }  # fmt: skip
    path = tmp_path / "clip.yaml"
    path.write_text(json.dumps(config))
    return path


def test_contrastive_recipe_learns_the_pairs_exports_a_scorer_and_curate_drops_swapped_captions(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = []
    for i, (caption, colour, shape, corner) in enumerate(SCENES):
        draw(colour, shape, corner).save(data / "images" / f"{i}.png")
        rows.append({"id": f"c{i}", "task": "caption", "image": f"images/{i}.png", "target": caption,
                     "meta": {"references": [caption, f"there is {caption[2:]}"]}})  # fmt: skip
    manifest = data / "captions.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    cli = cli_main(["fit", "--config", str(_clip_config(tmp_path, manifest))])
    results = json.loads((Path(cli.trainer.default_root_dir) / "test_results.json").read_text())["metrics"]
    assert results["test/recall_i2t@1"] == 1.0 and results["test/recall_t2i@1"] == 1.0
    best = cli.trainer.checkpoint_callback.best_model_path

    folder = tmp_path / "scorer"
    assert omnifuse(["export", best, "--out", str(folder)]) == 0
    from_folder, from_ckpt = ClipScorer.from_pretrained(folder), ClipScorer.from_pretrained(best)
    with torch.no_grad():
        assert_close(from_folder.embed_texts(["a red square"]), from_ckpt.embed_texts(["a red square"]))

    # Every caption moved to the next image: each pair now scores below its true pair, for the trained scorer.
    swapped = data / "swapped.jsonl"
    swapped.write_text("".join(
        json.dumps({**r, "id": f"s{i}", "target": rows[(i + 1) % 4]["target"]}) + "\n" for i, r in enumerate(rows)
    ) + manifest.read_text())  # fmt: skip
    out = data / "curated.jsonl"
    assert omnifuse(["curate", str(swapped), "--out", str(out), "--scorer", str(folder), "--drop-lowest", "0.5"]) == 0
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ["c0", "c1", "c2", "c3"]
