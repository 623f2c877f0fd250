"""easy-VQA (the ``easy-vqa`` PyPI package) as omnifuse manifests: VQA, spoken VQA, captions and JSON scenes.

Every easy-VQA image is a 64x64 picture of one shape (circle, rectangle or triangle) in one of 8 colours on a flat
light background; the package ships 4,000 train / 1,000 test images and 38,575 / 9,673 (question, answer, image id)
triples. Train and test image ids both start at 0, so an image is named by (source split, id).

Parts (``prepare_easyvqa(out_dir, parts)``), each written as ``{part}_{train,val,test}.jsonl`` in ``out_dir``:

- ``vqa``: image + question text -> answer. Official train and test questions, all of them; validation holds the
  questions of ``val_fraction`` of the train *images* (seeded), so no validation image is ever seen in training.
- ``spoken``: the same questions as audio (espeak-ng, no text field). Test clips use voices that train and
  validation never use.
- ``caption``: image -> caption, one record per image, several references (``meta['references']``; the target is
  the first). Shape and colour come from the dataset's own answers about that image; size and position are measured
  from the pixels.
- ``json``: image -> ``{shape, color, size, position, bbox}`` validated by ``scene.schema.json`` (JSON Schema
  2020-12), referenced from each record by relative path.
- ``mixed``: the ``vqa`` and ``spoken`` records of one question combined; each record asks its question as text, as
  audio or both (``meta['view']``, a seeded choice per question), so one model learns to serve all three. Besides
  ``mixed_{train,val,test}.jsonl`` it writes ``mixed_test_{text,audio,both}.jsonl``: every test question in one view,
  to measure each view separately. Audio clips are the ``spoken`` part's (test voices unheard in training).

Images are copied under ``out_dir/images/{train,test}/`` so every manifest path stays inside the manifest folder.
Building is deterministic and idempotent: a part whose manifests exist and were built with the same settings is
skipped; files are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from omnifuse.data.speech import Voice, synthesize_many

log = logging.getLogger(__name__)

PARTS: tuple[str, ...] = ("vqa", "spoken", "caption", "json", "mixed")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# How a ``mixed`` record asks its question, and the extra per-view test manifests of that part.
MIXED_VIEWS: tuple[str, ...] = ("text", "audio", "both")
PART_SPLITS: dict[str, tuple[str, ...]] = {"mixed": (*SPLITS, *(f"test_{v}" for v in MIXED_VIEWS))}
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")
# The exact RGB values easy-VQA draws with (its generator's colour table); measured colours are matched to these.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "blue": (0, 0, 255),
    "brown": (165, 42, 42),
    "gray": (128, 128, 128),
    "green": (0, 255, 0),
    "red": (255, 0, 0),
    "teal": (0, 128, 128),
    "yellow": (255, 255, 0),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SIZES: tuple[str, ...] = ("small", "medium", "large")
# 3x3 grid of the bounding-box centre, row-major.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
# Size by the bounding box's share of the image area. On easy-VQA these cut the images into near-equal thirds
# (measured: the 33rd / 66th percentiles of the area fraction are 0.0625 / 0.127).
SIZE_THRESHOLDS: tuple[float, float] = (1 / 16, 1 / 8)
# Shape from the share of the bounding box the shape fills: a triangle about 1/2, a circle pi/4, a rectangle 1.
# Measured on the 4,682 images whose shape an answer names: triangle 0.50-0.67, circle 0.74-0.91, rectangle >= 0.95.
FILL_THRESHOLDS: tuple[float, float] = (0.70, 0.93)

# Spoken questions. Training and validation clips draw a style per record from a wide pool: accent x variant (timbre),
# speed and pitch from ranges. Test clips use other accents and other variants, at a few fixed speeds and pitches, so
# the test measures generalisation to unheard speakers. Trained on six fixed voices (version 2), the spoken recipe
# reached 97.3 % on validation but 92.95 % on the test voices; with a speaker per record (version 3) validation and
# test are 1.4 points apart (README, "Spoken easy-VQA").
TRAIN_ACCENTS: tuple[str, ...] = ("en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd")
TRAIN_VARIANTS: tuple[str, ...] = ("", "f1", "f2", "f4", "f5", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2")
TRAIN_SPEED_RANGE: tuple[int, int] = (130, 200)  # words per minute, inclusive
TRAIN_PITCH_RANGE: tuple[int, int] = (25, 75)  # espeak-ng pitch 0-99, inclusive
TEST_VOICES: tuple[str, ...] = ("en-gb-scotland+m2", "en-us-nyc+f3", "en-gb-x-gbclan+m1")
TEST_SPEEDS: tuple[int, ...] = (140, 165, 190)
TEST_PITCHES: tuple[int, ...] = (35, 50, 65)
SAMPLE_RATE = 16000

SCHEMA_FILE = "scene.schema.json"
BUILD_INFO_FILE = "build_info.json"
# Bump when a part's output changes for the same settings, so existing builds are rebuilt rather than reused.
BUILD_VERSION = 3  # 2: meta.answer_type on vqa / spoken / mixed records; 3: the wide training voice pool


# ----------------------------------------------------------------------------------------------------------- source


def _source(split: str) -> tuple[list[tuple[str, str, int]], dict[int, str]]:
    """The package's (question, answer, image id) triples and image paths for official split ``train`` / ``test``."""
    import easy_vqa

    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        texts, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"easy-VQA has official splits 'train' and 'test', not {split!r}")
    return list(zip(texts, answers, (int(i) for i in image_ids))), {int(k): v for k, v in paths.items()}


# ------------------------------------------------------------------------------------------------- facts from answers

_WORD = re.compile(r"[a-z]+")


def answer_type(answer: str) -> str:
    """``yes/no``, ``shape`` or ``color``: the kind of answer (VQA's ``answer_type``, with easy-VQA's two "other"
    kinds told apart), stored as ``meta['answer_type']`` so that training can balance them (``balance_by``)."""
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in SHAPES:
        return "shape"
    if answer in PALETTE:
        return "color"
    raise ValueError(f"easy-VQA answer {answer!r} is none of yes/no, {sorted(SHAPES)}, {sorted(PALETTE)}")


def question_facts(question: str, answer: str) -> dict[str, str]:
    """What a (question, answer) pair says about its image: ``{'shape': ..., 'color': ...}`` (either may be absent).

    easy-VQA asks "what shape ..." / "what color is the X" / "what is the C shape" and yes/no questions about one
    shape or colour word, some negated ("is there not a ...", "is no ... present", "does the image not contain ...").
    A yes/no question only tells us something when it affirms presence.
    """
    q = question.strip().lower()
    words = _WORD.findall(q)
    facts: dict[str, str] = {}
    m = re.fullmatch(r"what (?:color is|is the color of) the (\w+)\?", q)
    if m:
        facts["color"] = answer
        if m.group(1) in SHAPES:
            facts["shape"] = m.group(1)
        return facts
    m = re.fullmatch(r"what is the (\w+) shape\?", q)
    if m:
        return {"color": m.group(1), "shape": answer}
    if q.startswith("what shape"):
        return {"shape": answer}
    if answer in ("yes", "no"):
        mentioned = [w for w in words if w in SHAPES or w in PALETTE]
        if len(mentioned) != 1:
            return {}
        negated = "not" in words or "no" in words
        if (answer == "yes") != negated:  # the image has the mentioned attribute
            word = mentioned[0]
            facts["shape" if word in SHAPES else "color"] = word
    return facts


def answer_facts(questions: Iterable[tuple[str, str, int]]) -> dict[int, dict[str, str]]:
    """Per image id, the shape and colour its questions' answers establish; contradictory answers raise."""
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for question, answer, image_id in questions:
        for key, value in question_facts(question, answer).items():
            known = out[image_id].setdefault(key, value)
            if known != value:
                raise ValueError(f"easy-VQA image {image_id}: answers disagree on {key} ({known!r} vs {value!r})")
    return dict(out)


# ------------------------------------------------------------------------------------------------ facts from pixels


@dataclass(frozen=True)
class Measurement:
    """What the pixels of one image say. ``bbox`` is ``[x0, y0, x1, y1]`` in pixels, x1/y1 exclusive."""

    width: int
    height: int
    background: tuple[int, int, int]
    shape_rgb: tuple[int, int, int]
    color: str  # nearest palette colour to shape_rgb
    bbox: tuple[int, int, int, int]
    fill: float  # share of the bbox covered by the shape
    shape: str  # guessed from fill
    size: str
    position: str


def measure_image(path: str | Path) -> Measurement:
    """Segment the single shape of an easy-VQA image from its background.

    The background is one flat colour (different per image); it is the most common colour on the image border (a shape
    may touch the border but never covers most of it). The shape colour is the most common non-background colour
    (interior pixels outnumber the anti-aliased edge blends). A pixel belongs to the shape when it is at least half way
    from the background to the shape colour, i.e. at least half covered by the shape.
    """
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)  # (H, W, 3)
    height, width = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])  # (2W + 2H, 3)
    colours, counts = np.unique(border, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    distance = np.abs(rgb - background).max(axis=-1)  # (H, W) Chebyshev distance from the background
    if not (distance > 0).any():
        raise ValueError(f"{path}: no shape found (the image is one flat colour)")
    colours, counts = np.unique(rgb[distance > 0], axis=0, return_counts=True)
    shape_rgb = colours[counts.argmax()]
    contrast = int(np.abs(shape_rgb - background).max())
    inside = 2 * distance >= contrast  # (H, W) at least half covered
    ys, xs = np.nonzero(inside)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    box_area = (x1 - x0) * (y1 - y0)
    fill = float(inside[y0:y1, x0:x1].sum()) / box_area
    shape = "triangle" if fill < FILL_THRESHOLDS[0] else "circle" if fill < FILL_THRESHOLDS[1] else "rectangle"
    area = box_area / (width * height)
    size = "small" if area < SIZE_THRESHOLDS[0] else "medium" if area < SIZE_THRESHOLDS[1] else "large"
    col = min(int(3 * (x0 + x1) / 2 / width), 2)
    row = min(int(3 * (y0 + y1) / 2 / height), 2)
    palette = np.array(list(PALETTE.values()))
    color = COLORS[int(((palette - shape_rgb) ** 2).sum(axis=1).argmin())]
    return Measurement(
        width=width,
        height=height,
        background=tuple(int(v) for v in background),
        shape_rgb=tuple(int(v) for v in shape_rgb),
        color=color,
        bbox=(x0, y0, x1, y1),
        fill=fill,
        shape=shape,
        size=size,
        position=POSITIONS[3 * row + col],
    )


@dataclass(frozen=True)
class Scene:
    """The description of one image used by the caption and JSON parts."""

    shape: str
    color: str
    size: str
    position: str
    bbox: tuple[int, int, int, int]
    shape_source: str  # "answers" or "pixels"
    color_source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "position": self.position,
            "bbox": list(self.bbox),
        }


def describe(path: str | Path, facts: dict[str, str] | None = None) -> Scene:
    """Scene of one image: shape and colour from the answers (``facts``) when they give them, else from the pixels."""
    m = measure_image(path)
    facts = facts or {}
    return Scene(
        shape=facts.get("shape", m.shape),
        color=facts.get("color", m.color),
        size=m.size,
        position=m.position,
        bbox=m.bbox,
        shape_source="answers" if "shape" in facts else "pixels",
        color_source="answers" if "color" in facts else "pixels",
    )


def caption_references(scene: Scene) -> list[str]:
    """Several correct phrasings of a scene; the first (the target) is the most complete."""
    size, color, shape, where = scene.size, scene.color, scene.shape, POSITION_PHRASES[scene.position]
    return [
        f"a {size} {color} {shape} {where}",
        f"there is a {size} {color} {shape} {where} of the image",
        f"a {color} {shape} of {size} size {where}",
        f"the image shows a {color} {shape} {where}",
    ]


def scene_schema(width: int = 64, height: int = 64) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a JSON-part target, for images of ``width x height`` pixels."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "easy-VQA scene",
        "description": "The single shape of an easy-VQA image. bbox is [x0, y0, x1, y1] in pixels, x1/y1 exclusive.",
        "type": "object",
        "properties": {
            "shape": {"type": "string", "enum": list(SHAPES)},
            "color": {"type": "string", "enum": list(COLORS)},
            "size": {"type": "string", "enum": list(SIZES)},
            "position": {"type": "string", "enum": list(POSITIONS)},
            "bbox": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": max(width, height)},
                "minItems": 4,
                "maxItems": 4,
            },
        },
        "required": ["shape", "color", "size", "position", "bbox"],
        "additionalProperties": False,
    }


# ------------------------------------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class ImageRef:
    """One source image: official split (``train``/``test``), id, and the split it lands in (``train``/``val``/``test``)."""

    source: str
    image_id: int
    split: str

    @property
    def rel_path(self) -> str:
        return f"images/{self.source}/{self.image_id}.png"


def split_images(seed: int = 0, val_fraction: float = 0.1, limit_images: int | None = None) -> list[ImageRef]:
    """All images used, each assigned to train / val / test; validation is a seeded sample of train images.

    ``limit_images`` keeps the first N image ids of each official split (tests and quick builds).
    """
    refs: list[ImageRef] = []
    for source in ("train", "test"):
        ids = sorted(_source(source)[1])
        if limit_images is not None:
            ids = ids[:limit_images]
        val: set[int] = set()
        if source == "train" and val_fraction > 0 and len(ids) > 1:
            n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
            val = set(random.Random(seed).sample(ids, n_val))
        refs += [ImageRef(source, i, "test" if source == "test" else "val" if i in val else "train") for i in ids]
    return refs


# ------------------------------------------------------------------------------------------------------ voices


def _train_voice(rng: random.Random) -> Voice:
    """A training / validation speaking style: any training accent and variant, speed and pitch from their ranges."""
    variant = rng.choice(TRAIN_VARIANTS)
    name = rng.choice(TRAIN_ACCENTS) + (f"+{variant}" if variant else "")
    return Voice(name, rng.randint(*TRAIN_SPEED_RANGE), rng.randint(*TRAIN_PITCH_RANGE))


def _test_voice(rng: random.Random) -> Voice:
    """A test speaking style. The draw is the one version 2 made, so test clips stay comparable across versions."""
    return Voice(rng.choice(TEST_VOICES), rng.choice(TEST_SPEEDS), rng.choice(TEST_PITCHES))


# ---------------------------------------------------------------------------------------------------------- writing


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _copy_images(out_dir: Path, refs: Sequence[ImageRef]) -> None:
    """Copy (not link: a symlink would resolve outside the manifest folder and be refused) the images used."""
    sources = {s: _source(s)[1] for s in {r.source for r in refs}}
    for ref in refs:
        src = Path(sources[ref.source][ref.image_id])
        dst = out_dir / ref.rel_path
        if dst.is_file() and dst.stat().st_size == src.stat().st_size:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


class _Build:
    """State shared by the parts of one ``prepare_easyvqa`` call (sources and scenes are computed once)."""

    def __init__(self, out_dir: Path, seed: int, val_fraction: float, limit_images: int | None, workers: int):
        self.out_dir = out_dir
        self.seed = seed
        self.workers = workers
        self.refs = split_images(seed, val_fraction, limit_images)
        self.by_key = {(r.source, r.image_id): r for r in self.refs}
        self._questions: dict[str, list[tuple[str, str, int]]] = {}
        self._scenes: dict[tuple[str, int], Scene] | None = None

    def questions(self, source: str) -> list[tuple[str, str, int]]:
        if source not in self._questions:
            self._questions[source] = _source(source)[0]
        return self._questions[source]

    def question_rows(self) -> Iterable[tuple[ImageRef, int, str, str]]:
        """(image, question index in the official list, question, answer) for every question on a used image."""
        for source in ("train", "test"):
            for index, (question, answer, image_id) in enumerate(self.questions(source)):
                ref = self.by_key.get((source, image_id))
                if ref is not None:
                    yield ref, index, question, answer

    def scenes(self) -> dict[tuple[str, int], Scene]:
        if self._scenes is None:
            self._scenes = {}
            for source in ("train", "test"):
                facts = answer_facts(self.questions(source))
                for ref in self.refs:
                    if ref.source == source:
                        path = self.out_dir / ref.rel_path
                        self._scenes[(source, ref.image_id)] = describe(path, facts.get(ref.image_id))
        return self._scenes

    # One method per part: each returns {split: rows}.

    def build_vqa(self) -> dict[str, list[dict]]:
        rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for ref, index, question, answer in self.question_rows():
            rows[ref.split].append(
                {
                    "id": f"vqa-{ref.source}-q{index:06d}",
                    "task": "vqa",
                    "image": ref.rel_path,
                    "text": question,
                    "target": answer,
                    "meta": {
                        "answers": [answer],
                        "answer_type": answer_type(answer),
                        "image_id": ref.image_id,
                        "source_split": ref.source,
                    },
                }
            )
        return rows

    def build_spoken(self) -> dict[str, list[dict]]:
        planned: list[tuple[ImageRef, int, str, str, Voice]] = []
        for ref, index, question, answer in self.question_rows():
            # Per-record style from a string seed: stable across runs and Python versions, independent of order.
            rng = random.Random(f"{self.seed}:{ref.source}:{index}")
            voice = _test_voice(rng) if ref.split == "test" else _train_voice(rng)
            planned.append((ref, index, question, answer, voice))
        jobs = [(question, voice) for _, _, question, _, voice in planned]
        log.info("spoken: %d records, %d distinct clips", len(planned), len(set(jobs)))
        paths = synthesize_many(jobs, self.out_dir / "audio", SAMPLE_RATE, workers=self.workers)
        rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for ref, index, question, answer, voice in planned:
            rows[ref.split].append(
                {
                    "id": f"spoken-{ref.source}-q{index:06d}",
                    "task": "vqa",
                    "image": ref.rel_path,
                    "audio": paths[(question, voice)].relative_to(self.out_dir).as_posix(),
                    "target": answer,
                    "meta": {
                        "answers": [answer],
                        "answer_type": answer_type(answer),
                        "transcript": question,
                        "voice": voice.name,
                        "speed": voice.speed,
                        "pitch": voice.pitch,
                        "image_id": ref.image_id,
                        "source_split": ref.source,
                    },
                }
            )
        return rows

    def build_caption(self) -> dict[str, list[dict]]:
        scenes = self.scenes()
        rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for ref in self.refs:
            scene = scenes[(ref.source, ref.image_id)]
            refs = caption_references(scene)
            rows[ref.split].append(
                {
                    "id": f"caption-{ref.source}-{ref.image_id:04d}",
                    "task": "caption",
                    "image": ref.rel_path,
                    "target": refs[0],
                    "meta": {"references": refs, "image_id": ref.image_id, "source_split": ref.source},
                }
            )
        return rows

    def build_json(self) -> dict[str, list[dict]]:
        scenes = self.scenes()
        _write_json(self.out_dir / SCHEMA_FILE, scene_schema())
        rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for ref in self.refs:
            scene = scenes[(ref.source, ref.image_id)]
            rows[ref.split].append(
                {
                    "id": f"json-{ref.source}-{ref.image_id:04d}",
                    "task": "json",
                    "image": ref.rel_path,
                    "target": scene.to_json(),
                    "schema": SCHEMA_FILE,
                    "meta": {
                        "image_id": ref.image_id,
                        "source_split": ref.source,
                        "attribute_source": {"shape": scene.shape_source, "color": scene.color_source},
                    },
                }
            )
        return rows

    def build_mixed(self) -> dict[str, list[dict]]:
        text_rows, audio_rows = self.build_vqa(), self.build_spoken()
        rows: dict[str, list[dict]] = {s: [] for s in PART_SPLITS["mixed"]}
        for split in SPLITS:
            for t, a in zip(text_rows[split], audio_rows[split], strict=True):
                key = t["id"].removeprefix("vqa-")  # "{source}-q{index}", shared by both parts' records
                if a["id"] != f"spoken-{key}":
                    raise AssertionError(f"mixed: vqa record {t['id']} paired with spoken record {a['id']}")
                seeded = random.Random(f"{self.seed}:mixed:{key}").choice(MIXED_VIEWS)
                for name, view in [(split, seeded)] + [(f"test_{v}", v) for v in MIXED_VIEWS if split == "test"]:
                    record = {"id": f"mixed-{key}-{view}", "task": "vqa", "image": t["image"]}
                    if view in ("text", "both"):
                        record["text"] = t["text"]
                    if view in ("audio", "both"):
                        record["audio"] = a["audio"]
                    record["target"] = t["target"]
                    record["meta"] = {"view": view, **a["meta"]}
                    rows[name].append(record)
        return rows


def manifest_paths(out_dir: str | Path, parts: Iterable[str] = PARTS) -> dict[str, Path]:
    """``{'vqa_train': out_dir/vqa_train.jsonl, ...}`` for the given parts (whether built or not)."""
    out_dir = Path(out_dir)
    return {f"{p}_{s}": out_dir / f"{p}_{s}.jsonl" for p in _check_parts(parts) for s in PART_SPLITS.get(p, SPLITS)}


def _check_parts(parts: Iterable[str] | str) -> list[str]:
    if isinstance(parts, str):
        parts = [p for p in parts.split(",") if p.strip()]
    parts = [p.strip() for p in parts]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown easy-VQA part(s) {unknown}; known parts: {', '.join(PARTS)}")
    return list(dict.fromkeys(parts))


def prepare_easyvqa(
    out_dir: str | Path,
    parts: Iterable[str] | str = PARTS,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit_images: int | None = None,
    workers: int = 2,
    force: bool = False,
) -> dict[str, Path]:
    """Build the requested parts into ``out_dir``; returns the manifest path of each ``{part}_{split}``.

    Args:
        out_dir: output folder (manifests at its top, ``images/``, ``audio/``, ``scene.schema.json``).
        parts: any of ``vqa``, ``spoken``, ``caption``, ``json``, ``mixed`` (list or comma-separated string).
        seed: seeds the validation split and the spoken styles.
        val_fraction: share of the official train images held out for validation.
        limit_images: use only the first N images of each official split (quick builds and tests).
        workers: espeak-ng processes run at once for the spoken part.
        force: rebuild parts even when they are up to date.
    """
    parts = _check_parts(parts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"version": BUILD_VERSION, "seed": seed, "val_fraction": val_fraction, "limit_images": limit_images}
    info_path = out_dir / BUILD_INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    paths = manifest_paths(out_dir, parts)

    def up_to_date(part: str) -> bool:
        built = info.get(part, {})
        same = {k: built.get(k) for k in settings} == settings
        return same and all(paths[f"{part}_{s}"].is_file() for s in PART_SPLITS.get(part, SPLITS))

    todo = [p for p in parts if force or not up_to_date(p)]
    if todo:
        build = _Build(out_dir, seed, val_fraction, limit_images, workers)
        _copy_images(out_dir, build.refs)
        for part in todo:
            rows = getattr(build, f"build_{part}")()
            counts = {s: _write_jsonl(paths[f"{part}_{s}"], rows[s]) for s in PART_SPLITS.get(part, SPLITS)}
            info[part] = {**settings, "counts": counts}
            _write_json(info_path, info)  # after the manifests: an interrupted part is rebuilt next time
            log.info("easy-VQA %s: %s", part, counts)
    return paths


def manifest_counts(paths: dict[str, Path]) -> dict[str, int]:
    """Number of records in each manifest (non-blank lines)."""
    out = {}
    for name, path in paths.items():
        with path.open("rb") as fh:
            out[name] = sum(1 for line in fh if line.strip())
    return out


__all__ = [
    "COLORS",
    "MIXED_VIEWS",
    "PARTS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Measurement",
    "Scene",
    "answer_facts",
    "caption_references",
    "describe",
    "manifest_counts",
    "manifest_paths",
    "measure_image",
    "prepare_easyvqa",
    "question_facts",
    "scene_schema",
    "split_images",
]
