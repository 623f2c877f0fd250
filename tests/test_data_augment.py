"""Label-safe augmentation (data/augment.py): each transform against a plain reference of what it may change, the
per-task rules, and the data module applying it to training samples only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from omnifuse.data.augment import AugmentConfig, Augmenter
from omnifuse.data.datamodule import MultimodalDataModule


def _image() -> torch.Tensor:
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32)
    img[0, 8:16, 8:16] = 0.8  # a red square
    img[2, 20:28, 4:12] = 0.6  # a blue one
    return img


def test_brightness_and_contrast_keep_hue_and_position():
    """Photometric jitter scales and shifts intensities: each pixel's channel ratios (its hue) stay, and nothing
    moves (the set of non-black pixels is the same)."""
    aug = Augmenter(AugmentConfig(brightness=0.3, contrast=0.3))
    img = _image()
    for _ in range(20):
        out = aug.image(img, "vqa")
        assert out.shape == img.shape and out.min() >= 0.0 and out.max() <= 1.0
        lit = img.sum(0) > 0
        # Hue: the dominant channel of every coloured pixel is unchanged.
        assert torch.equal(out[:, lit].argmax(0), img[:, lit].argmax(0))
        red = out[0, 8:16, 8:16]
        assert red.std() < 1e-6  # a flat patch stays flat: no geometric change inside it


def test_translation_only_for_listed_tasks_and_never_for_position_targets():
    img = _image()
    torch.manual_seed(3)
    aug = Augmenter(AugmentConfig(translate=4, translate_tasks=["vqa"]))
    moved = [aug.image(img, "vqa") for _ in range(10)]
    assert any(not torch.equal(m, img) for m in moved)
    for m in moved:  # an integer shift of at most 4 pixels: the red square's mass is conserved while inside the frame
        assert float(m[0].sum()) == pytest.approx(float(img[0].sum()), rel=1e-5)
    assert all(torch.equal(aug.image(img, task), img) for task in ("caption", "json"))  # not listed: untouched
    with pytest.raises(ValueError, match="json"):
        AugmentConfig(translate=4, translate_tasks=["json"])
    with pytest.raises(ValueError, match="caption"):
        AugmentConfig(translate=4, translate_tasks=["caption"])
    with pytest.raises(ValueError, match="brightness"):
        AugmentConfig(brightness=1.5)


def test_shift_equals_torchvision_affine_translation():
    """The pad-and-crop shift is torchvision's affine with the same integer translation (zero fill), for every shift
    the config allows, on a non-square image; and the drawn shifts cover -translate..translate on both axes."""
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    img = torch.rand(3, 20, 28)
    aug = Augmenter(AugmentConfig(translate=3, translate_tasks=["vqa"]))
    for dx in range(-3, 4):
        for dy in range(-3, 4):
            ref = TF.affine(img, angle=0.0, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0], fill=0.0)
            assert torch.equal(aug.shift(img, dx, dy), ref), (dx, dy)
    seen = set()
    probe = torch.zeros(1, 15, 15)
    probe[0, 7, 7] = 1.0  # one lit pixel: where it lands is the drawn shift
    for _ in range(400):
        y, x = divmod(int(aug.image(probe, "vqa")[0].flatten().argmax()), 15)
        seen.add((x - 7, y - 7))
    assert seen == {(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)}


def test_text_noise_rates():
    """Typos touch letters only, at about the requested rate; word dropout never empties the question nor drops a
    negation; both only for the tasks listed."""
    text = "what color is the shape in the image?"
    torch.manual_seed(0)
    aug = Augmenter(AugmentConfig(typo_rate=0.1, text_noise_tasks=["vqa"]))
    changed = sum(aug.text(text) != text for _ in range(200))
    assert 150 < changed < 200  # 29 letters at 10 %: P(no typo) = 0.9^29 ~ 5 %
    assert all(c in aug.text("?!,.") for c in "?!,.")  # punctuation untouched
    drop = Augmenter(AugmentConfig(word_dropout=0.5, text_noise_tasks=["vqa"]))
    lengths = [len(drop.text(text).split(" ")) for _ in range(400)]
    assert min(lengths) >= 1 and 3.0 < sum(lengths) / len(lengths) < 5.0  # 8 words at 50 %: 4 on average
    assert all("not" in drop.text("is there not a circle?").split(" ") for _ in range(50))  # negations stay
    assert drop.text(text, "caption") == text  # a task not listed: untouched
    assert Augmenter(AugmentConfig()).text(text) == text and not Augmenter(AugmentConfig()).active
    with pytest.raises(ValueError, match="text_noise_tasks"):
        AugmentConfig(typo_rate=0.1)  # text noise is the user's explicit choice per task


def test_datamodule_augments_training_samples_only(tmp_path: Path):
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "img.png")
    lines = [
        json.dumps({"id": f"q{i}", "task": "vqa", "image": "img.png", "text": "what color is it?", "target": "red"})
        for i in range(8)
    ]
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    dm = MultimodalDataModule(
        train_manifest=str(tmp_path / "train.jsonl"), val_manifest=str(tmp_path / "val.jsonl"), image_size=8,
        augment={"brightness": 0.5, "typo_rate": 0.3, "text_noise_tasks": ["vqa"]},
    )  # fmt: skip
    dm.setup("fit")
    torch.manual_seed(0)
    train = [dm.datasets["train"][i] for i in range(8)]
    val = [dm.datasets["val"][i] for i in range(8)]
    plain = val[0].image
    assert any(not torch.equal(s.image, plain) for s in train)  # jittered
    assert any(s.text != "what color is it?" for s in train)
    assert all(torch.equal(s.image, plain) and s.text == "what color is it?" for s in val)  # evaluation as is
