"""Collation of batches that mix samples with and without each modality."""

from __future__ import annotations

import json

import pytest
import torch

from omnifuse.data.batch import MODALITIES
from omnifuse.data.collate import Collator
from omnifuse.data.sample import Sample
from omnifuse.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def _image(value: float) -> torch.Tensor:
    return torch.full((3, 8, 8), value)


@pytest.fixture
def samples() -> list[Sample]:
    return [
        Sample(id="a", task="vqa", image=_image(0.5), text="what color?", target="red"),
        Sample(id="b", task="vqa", audio=torch.ones(5), target="yes"),
        Sample(id="bad", task="vqa", error="field 'image': file is not a valid image"),
        Sample(id="c", task="caption", image=_image(0.25), audio=torch.full((9,), 0.5), target="a small red circle"),
        Sample(id="d", task="json", text="é?", target={"k": [1, "ü"]}, schema={"type": "object"}, meta={"m": 1}),
    ]


def test_present_flags_and_order(samples):
    batch = Collator(TOK)(samples)
    assert batch.ids == ["a", "b", "c", "d"]  # order kept, the failed sample left out
    assert batch.tasks == ["vqa", "vqa", "caption", "json"]
    assert MODALITIES == ("image", "audio", "text")
    expected = [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert torch.equal(batch.present, torch.tensor(expected, dtype=torch.bool))
    assert batch.failed == [("bad", "field 'image': file is not a valid image")]
    assert batch.targets == ["red", "yes", "a small red circle", {"k": [1, "ü"]}]
    assert batch.schemas == [None, None, None, {"type": "object"}]
    assert batch.meta[3] == {"m": 1}


def test_images_zero_filled_for_absent(samples):
    batch = Collator(TOK)(samples)
    assert batch.image.shape == (4, 3, 8, 8)
    assert torch.equal(batch.image[0], _image(0.5)) and torch.equal(batch.image[2], _image(0.25))
    assert not batch.image[1].any() and not batch.image[3].any()


def test_audio_padding_and_mask(samples):
    batch = Collator(TOK)(samples)
    assert batch.audio.shape == batch.audio_mask.shape == (4, 9)
    assert batch.audio_mask.sum(1).tolist() == [0, 5, 9, 0]  # each sample's own length
    assert torch.equal(batch.audio[1, :5], torch.ones(5)) and not batch.audio[1, 5:].any()
    assert torch.equal(batch.audio[2], torch.full((9,), 0.5))


def test_text_ids_and_mask(samples):
    batch = Collator(TOK)(samples)
    lengths = [len(b"what color?"), 0, 0, len("é?".encode())]
    assert batch.text_mask.sum(1).tolist() == lengths
    assert bytes(batch.text[0, : lengths[0]].tolist()) == b"what color?"  # no bos/eos
    assert (batch.text[1] == TOK.pad_id).all()


def test_target_ids_layout(samples):
    batch = Collator(TOK)(samples)
    compact = json.dumps({"k": [1, "ü"]}, ensure_ascii=False, separators=(",", ":")).encode()
    bodies = [b"red", b"yes", b"a small red circle", compact]
    tasks = ["vqa", "vqa", "caption", "json"]
    assert batch.target_mask.sum(1).tolist() == [len(b) + 2 for b in bodies]
    for row, (body, task) in enumerate(zip(bodies, tasks)):
        ids = batch.target_ids[row, : len(body) + 2].tolist()
        assert ids == [TOK.task_id(task), *body, TOK.eos_id]
        assert (batch.target_ids[row, len(body) + 2 :] == TOK.pad_id).all()


def test_missing_modalities_are_none():
    batch = Collator(TOK)([Sample(id="x", task="vqa", text="hi", target="no")])
    assert batch.image is None and batch.audio is None and batch.audio_mask is None
    assert batch.text.shape == (1, 2)


def test_inference_batch_without_targets():
    batch = Collator(TOK)([Sample(id="x", task="vqa", text="hi"), Sample(id="y", task="caption", text="yo")])
    assert batch.target_ids is None and batch.target_mask is None
    assert batch.targets == [None, None]


def test_truncation(samples):
    batch = Collator(TOK, max_text_len=3, max_target_len=4)(samples)
    assert batch.text.shape[1] == 3 and batch.target_ids.shape[1] == 4
    assert batch.target_ids[2].tolist() == [TOK.task_id("caption"), *b"a s"]  # cut: no eos


def test_all_failed_batch_is_empty_but_reports():
    batch = Collator(TOK)([Sample.failed("z", "field 'audio': file is empty (0 bytes)")])
    assert len(batch) == 0 and batch.present.shape == (0, 3)
    assert batch.failed == [("z", "field 'audio': file is empty (0 bytes)")]


def test_mismatched_image_sizes_fail_clearly():
    mixed = [
        Sample(id="a", task="vqa", image=torch.zeros(3, 8, 8)),
        Sample(id="b", task="vqa", image=torch.zeros(3, 4, 4)),
    ]
    with pytest.raises(ValueError, match="share a size"):
        Collator(TOK)(mixed)


def test_batch_moves_to_device(samples):
    batch = Collator(TOK)(samples).to("cpu")
    assert batch.image.device.type == "cpu" and batch.ids == ["a", "b", "c", "d"]
