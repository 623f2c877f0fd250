"""easy-VQA builders, checked against the easy_vqa package's own questions, answers and pixels."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import easy_vqa
import jsonschema
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omnifuse.data.easyvqa import COLORS, PALETTE, SHAPES, measure_image, prepare_easyvqa, question_facts
from omnifuse.data.records import Record, read_manifest

SPLITS = ("train", "val", "test")


def read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The full vqa, caption and json parts (a few seconds: no audio)."""
    out = tmp_path_factory.mktemp("easyvqa")
    prepare_easyvqa(out, parts=("vqa", "caption", "json"))
    return out


@pytest.fixture(scope="module")
def rows(built: Path) -> dict[str, list[dict]]:
    return {f"{p}_{s}": read_rows(built / f"{p}_{s}.jsonl") for p in ("vqa", "caption", "json") for s in SPLITS}


def package_questions(source: str) -> list[tuple[str, str, int]]:
    texts, answers, ids = easy_vqa.get_train_questions() if source == "train" else easy_vqa.get_test_questions()
    return list(zip(texts, answers, ids))


# --------------------------------------------------------------------------------------------------------------- vqa


def test_vqa_counts_match_the_package(rows):
    train_q, test_q = package_questions("train"), package_questions("test")
    assert (len(train_q), len(test_q)) == (38575, 9673)  # the figures the package's README states
    assert len(rows["vqa_train"]) + len(rows["vqa_val"]) == len(train_q)
    assert len(rows["vqa_test"]) == len(test_q)


def test_vqa_no_question_lost_or_duplicated(rows):
    def as_triples(rs):
        return Counter((r["text"], r["target"], r["meta"]["image_id"]) for r in rs)

    assert as_triples(rows["vqa_train"] + rows["vqa_val"]) == Counter(package_questions("train"))
    assert as_triples(rows["vqa_test"]) == Counter(package_questions("test"))
    ids = [r["id"] for s in SPLITS for r in rows[f"vqa_{s}"]]
    assert len(ids) == len(set(ids))


def test_vqa_answer_type_follows_the_question(rows):
    # Told from the question's wording (easy-VQA's templates), independently of the answer-based labelling.
    def from_question(q: str) -> str:
        if q.startswith("what shape") or (q.startswith("what is the") and q.endswith(" shape?") and "color" not in q):
            return "shape"
        if q.startswith("what"):
            return "color"
        return "yes/no"

    for split in SPLITS:
        for r in rows[f"vqa_{split}"]:
            assert r["meta"]["answer_type"] == from_question(r["text"]), r
    counts = Counter(r["meta"]["answer_type"] for r in rows["vqa_train"])
    assert counts["yes/no"] > 5 * counts["shape"]  # the imbalance balance_by exists for


def test_vqa_validation_is_split_by_image(rows):
    train_images = {r["image"] for r in rows["vqa_train"]}
    val_images = {r["image"] for r in rows["vqa_val"]}
    assert train_images.isdisjoint(val_images)
    assert all(r["meta"]["source_split"] == "train" for r in rows["vqa_val"])
    # 10% of the 4,000 train images; the questions follow their images.
    assert len({r["image"] for r in rows["caption_val"]}) == 400
    assert 0.07 < len(rows["vqa_val"]) / 38575 < 0.13


def test_vqa_image_paths_point_at_the_package_images(built: Path, rows):
    package = {"train": easy_vqa.get_train_image_paths(), "test": easy_vqa.get_test_image_paths()}
    for r in rows["vqa_val"][:50] + rows["vqa_test"][:50]:
        source, image_id = r["meta"]["source_split"], r["meta"]["image_id"]
        assert (built / r["image"]).read_bytes() == Path(package[source][image_id]).read_bytes()


def test_manifests_validate(built: Path):
    for name in ("vqa_val", "caption_test", "json_test"):
        items = read_manifest(built / f"{name}.jsonl")
        assert items and all(isinstance(i, Record) for i in items)


# ------------------------------------------------------------------------------------------------- caption and json


def test_every_image_has_one_caption_and_one_scene(rows):
    for part in ("caption", "json"):
        test_ids = [r["meta"]["image_id"] for r in rows[f"{part}_test"]]
        assert sorted(test_ids) == sorted(easy_vqa.get_test_image_paths())
        train_ids = [r["meta"]["image_id"] for s in ("train", "val") for r in rows[f"{part}_{s}"]]
        assert sorted(train_ids) == sorted(easy_vqa.get_train_image_paths())


def _scenes(rows) -> dict[tuple[str, int], dict]:
    return {(r["meta"]["source_split"], r["meta"]["image_id"]): r["target"] for s in SPLITS for r in rows[f"json_{s}"]}


def test_scene_shape_and_color_agree_with_the_answers(rows):
    scenes = _scenes(rows)
    checked = Counter()
    for source in ("train", "test"):
        for question, answer, image_id in package_questions(source):
            scene = scenes[(source, image_id)]
            # Open questions answer with the shape or the colour itself.
            if answer in SHAPES:
                assert scene["shape"] == answer, (source, image_id, question)
                checked["shape"] += 1
            elif answer in COLORS:
                assert scene["color"] == answer, (source, image_id, question)
                checked["color"] += 1
            # "is there a red shape?" -> yes: the colour; "... not ..." flips it.
            words = question.rstrip("?").split()
            if answer == "yes" and "not" not in words and "no" not in words:
                named = [w for w in words if w in SHAPES or w in COLORS]
                assert named and named[0] in (scene["shape"], scene["color"]), (source, image_id, question)
                checked["yes"] += 1
    assert checked["shape"] > 5000 and checked["color"] > 5000 and checked["yes"] > 3000


def test_captions_name_the_scene(rows):
    for s in SPLITS:
        scenes = {r["meta"]["image_id"]: r["target"] for r in rows[f"json_{s}"]}
        for r in rows[f"caption_{s}"]:
            scene = scenes[r["meta"]["image_id"]]
            refs = r["meta"]["references"]
            assert r["target"] == refs[0] and len(refs) >= 3 and len(set(refs)) == len(refs)
            for ref in refs:
                assert scene["shape"] in ref.split() and scene["color"] in ref.split()
            assert scene["size"] in r["target"]


def test_bbox_contains_the_shape_and_is_tight(built: Path, rows):
    for s in SPLITS:
        for r in rows[f"json_{s}"]:
            pixels = np.asarray(Image.open(built / r["image"]).convert("RGB"), dtype=np.int32)  # (H, W, 3)
            # Background found independently of the builder: the most common colour of the whole image.
            packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]  # (H, W) one int per colour
            colours, counts = np.unique(packed, return_counts=True)
            top = int(colours[counts.argmax()])
            background = np.array([top >> 16, (top >> 8) & 255, top & 255])
            diff = np.abs(pixels - background).max(axis=-1)  # (H, W)
            x0, y0, x1, y1 = r["target"]["bbox"]
            inside = np.zeros_like(diff, dtype=bool)
            inside[y0:y1, x0:x1] = True
            contrast = diff.max()
            # Every pixel far from the background colour lies inside the box ...
            assert not (diff[~inside] > 0.75 * contrast).any(), r["id"]
            # ... and each edge row / column of the box holds clearly shape-coloured pixels (the box is tight).
            strong = diff > 0.4 * contrast
            for edge in (strong[y0, x0:x1], strong[y1 - 1, x0:x1], strong[y0:y1, x0], strong[y0:y1, x1 - 1]):
                assert edge.any(), r["id"]


def test_pixel_colour_is_an_exact_palette_colour(built: Path, rows):
    for r in rows["json_test"][:200]:
        pixels = np.asarray(Image.open(built / r["image"]).convert("RGB"))
        palette_colour = PALETTE[r["target"]["color"]]
        assert (pixels == palette_colour).all(axis=-1).sum() >= 10, r["id"]  # solid interior in that exact colour


def test_pixel_shape_guess_agrees_with_every_answer():
    """The fallback used for images no question describes is right wherever an answer can check it."""
    for source, paths in (("train", easy_vqa.get_train_image_paths()), ("test", easy_vqa.get_test_image_paths())):
        answered: dict[int, str] = {}
        for _question, answer, image_id in package_questions(source):
            if answer in SHAPES:
                answered[image_id] = answer
        for image_id, shape in answered.items():
            m = measure_image(paths[image_id])
            assert m.shape == shape, (source, image_id, m.fill)


def test_json_targets_match_the_schema(built: Path, rows):
    schema = json.loads((built / "scene.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"shape", "color", "size", "position", "bbox"}
    validator = jsonschema.Draft202012Validator(schema)
    for s in SPLITS:
        for r in rows[f"json_{s}"]:
            assert r["schema"] == "scene.schema.json"
            validator.validate(r["target"])
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(
            {"shape": "hexagon", "color": "red", "size": "small", "position": "top", "bbox": [0, 0, 1, 1]}
        )
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(
            {"shape": "circle", "color": "red", "size": "small", "position": "top", "bbox": [0, 0, 1.5, 1]}
        )


def test_question_facts_examples():
    assert question_facts("what color is the triangle?", "red") == {"color": "red", "shape": "triangle"}
    assert question_facts("what is the blue shape?", "circle") == {"color": "blue", "shape": "circle"}
    assert question_facts("is there not a teal shape?", "no") == {"color": "teal"}
    assert question_facts("is there not a teal shape?", "yes") == {}
    assert question_facts("does the image contain a circle?", "yes") == {"shape": "circle"}


def test_rebuild_is_skipped_when_up_to_date(built: Path):
    before = {p.name: p.stat().st_mtime_ns for p in built.glob("*.jsonl")}
    prepare_easyvqa(built, parts=("vqa", "caption", "json"))
    assert {p.name: p.stat().st_mtime_ns for p in built.glob("*.jsonl")} == before


def test_build_is_deterministic(tmp_path: Path, built: Path):
    prepare_easyvqa(tmp_path, parts=("caption",), limit_images=30)
    small = read_rows(tmp_path / "caption_val.jsonl")
    again = tmp_path / "again"
    prepare_easyvqa(again, parts=("caption",), limit_images=30)
    assert read_rows(again / "caption_val.jsonl") == small
    # A different image limit is a different build: the part is rebuilt, not reused.
    prepare_easyvqa(again, parts=("caption",), limit_images=40)
    assert len(read_rows(again / "caption_train.jsonl")) + len(read_rows(again / "caption_val.jsonl")) == 40


# ------------------------------------------------------------------------------------------------------------ spoken


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_spoken_subset(tmp_path: Path):
    paths = prepare_easyvqa(tmp_path, parts=("spoken",), limit_images=4, workers=2)
    spoken = {s: read_rows(paths[f"spoken_{s}"]) for s in SPLITS}
    questions = {
        src: [(q, a) for q, a, i in package_questions(src) if i < 4] for src in ("train", "test")
    }  # limit_images keeps ids 0..3
    assert len(spoken["train"]) + len(spoken["val"]) == len(questions["train"])
    assert len(spoken["test"]) == len(questions["test"])
    voices = {s: {r["meta"]["voice"] for r in spoken[s]} for s in SPLITS}
    # Unheard speakers: test accents and test variants (timbres) both differ from any heard in training.
    accents = {s: {v.partition("+")[0] for v in voices[s]} for s in SPLITS}
    variants = {s: {v.partition("+")[2] for v in voices[s]} for s in SPLITS}
    for part in (accents, variants):
        assert part["test"].isdisjoint(part["train"] | part["val"])
    styles = {(r["meta"]["voice"], r["meta"]["speed"], r["meta"]["pitch"]) for r in spoken["train"]}
    assert len(styles) > 0.9 * len(spoken["train"])  # training styles vary per record, not a few fixed voices
    for r in spoken["train"] + spoken["test"]:
        assert "text" not in r and r["target"] == r["meta"]["answers"][0]
    # One clip per distinct (text, voice, speed, pitch), shared by every record that needs it.
    style = {}
    for r in spoken["train"] + spoken["val"] + spoken["test"]:
        key = (r["meta"]["transcript"], r["meta"]["voice"], r["meta"]["speed"], r["meta"]["pitch"])
        assert style.setdefault(key, r["audio"]) == r["audio"]
    assert len(list((tmp_path / "audio").rglob("*.wav"))) == len(set(style.values())) == len(style)
    wave, rate = sf.read(tmp_path / spoken["test"][0]["audio"], dtype="float32")
    assert rate == 16000 and wave.ndim == 1
    assert 0.5 < len(wave) / rate < 6.0  # a short question
    assert float(np.sqrt(np.mean(wave**2))) > 0.01  # not silence
    assert len(read_manifest(paths["spoken_test"])) == len(spoken["test"])
