"""Curriculum learning (``data.curriculum``): the competence schedules against their formulas, each epoch drawn from
the easiest records only (seeded, sharded, resumable), the difficulty scores of every kind with per-record errors, and
the per-record loss that ``omnifuse predict`` writes for a reference model against a plain one-record-at-a-time loop."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from omnifuse.data.batch import MultimodalBatch
from omnifuse.data.curriculum import CurriculumConfig, difficulties, easiest_first, pool
from omnifuse.data.datamodule import MultimodalDataModule
from omnifuse.data.records import Record, RecordError
from omnifuse.data.sampler import ResumableSampler


def test_competence_schedules_follow_their_formulas():
    linear = CurriculumConfig(start=0.2, epochs=4, schedule="linear")
    assert [linear.competence(e) for e in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    sqrt = CurriculumConfig(start=0.2, epochs=4, schedule="sqrt")
    expected = [math.sqrt(0.04 + 0.96 * min(1, e / 4)) for e in range(6)]  # Platanios et al. 2019, eq. 6
    assert [sqrt.competence(e) for e in range(6)] == pytest.approx(expected)
    for bad in ({"start": 0.0}, {"epochs": 0}, {"schedule": "step"}, {"score": "loss"}, {"score": "meta."}):
        with pytest.raises(ValueError):
            CurriculumConfig(**bad)


def test_each_epoch_draws_only_from_its_pool_seeded_sharded_and_resumable():
    n = 40
    easiest = list(range(n - 1, -1, -1))  # record 39 is the easiest
    cfg = CurriculumConfig(start=0.25, epochs=2, schedule="linear")

    def pools(epoch: int) -> list[int]:
        return pool(easiest, cfg.competence(epoch))

    one = ResumableSampler(range(n), num_replicas=1, seed=3, pools=pools)
    for epoch, size in ((0, 10), (1, 25), (2, 40), (5, 40)):
        one.set_epoch(epoch)
        order = list(one)
        assert len(order) == n  # an epoch keeps its length
        allowed = set(easiest[:size])
        assert set(order) == allowed  # every record of the pool, nothing else
        counts = Counter(order).values()
        assert max(counts) - min(counts) <= 1  # the pool's shuffles repeated: as even as the length allows
    # Two ranks deal out the same epoch; a resumed rank continues where it stopped.
    one.set_epoch(1)
    whole = list(one)
    ranks = [ResumableSampler(range(n), num_replicas=2, rank=r, seed=3, pools=pools) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    assert [i for pair in zip(*(list(r) for r in ranks), strict=True) for i in pair] == whole
    resumed = ResumableSampler(range(n), num_replicas=2, rank=1, seed=3, pools=pools)
    resumed.start_at(1, 7)
    assert list(resumed) == whole[1::2][7:]
    # With weights: draws from the pool's records only, in proportion to their weights.
    weights = torch.ones(n)
    weights[easiest[0]] = 9.0
    weighted = ResumableSampler(range(n), seed=0, weights=weights, pools=pools)
    drawn = Counter()
    for epoch in range(50):
        weighted.set_epoch(0)
        weighted.seed = epoch
        drawn.update(weighted)
    assert set(drawn) <= set(easiest[:10])
    assert abs(drawn[easiest[0]] / sum(drawn.values()) - 0.5) < 0.05  # weight 9 of 18 in the pool


def _record(i: int, **fields) -> Record:
    return Record(id=f"r{i}", task="vqa", **fields)


def test_difficulty_scores_of_every_kind(tmp_path):
    records = [
        _record(0, text="a longer question here", target="yes", meta={"level": 3}),
        _record(1, text="short", target="rectangle", meta={"level": 1}),
        _record(2, text=None, target={"k": 1}, meta={"level": 2.5}),
    ]
    assert difficulties(records, CurriculumConfig(score="text_length")) == [22.0, 5.0, 0.0]
    assert difficulties(records, CurriculumConfig(score="target_length")) == [3.0, 9.0, len('{"k": 1}')]
    assert difficulties(records, CurriculumConfig(score="meta.level")) == [3.0, 1.0, 2.5]
    assert easiest_first([3.0, 1.0, 2.5, 1.0]) == [1, 3, 2, 0]  # ties keep manifest order
    bad = [*records, _record(3, text="q", meta={"level": "hard"})]
    with pytest.raises(RecordError, match=r"record 'r3': field 'meta.level'"):
        difficulties(bad, CurriculumConfig(score="meta.level"))
    losses = tmp_path / "predictions.jsonl"
    losses.write_text("".join(json.dumps({"id": f"r{i}", "prediction": "x", "loss": v}) + "\n"
                              for i, v in enumerate([0.5, 2.0])))  # fmt: skip
    with pytest.raises(RecordError, match=r"record 'r2': .*no numeric 'loss'"):
        difficulties(records, CurriculumConfig(score=f"file:{losses}"))
    assert difficulties(records[:2], CurriculumConfig(score=f"file:{losses}")) == [0.5, 2.0]


def test_datamodule_first_epoch_uses_the_easiest_records(tmp_path: Path):
    rows = [{"id": f"q{i}", "task": "vqa", "text": "word " * (i + 1), "target": "yes"} for i in range(32)]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = MultimodalDataModule(
        train_manifest=str(manifest), batch_size=4, curriculum={"score": "text_length", "start": 0.25, "epochs": 2}
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    first = {i for b in loader for i in b.ids}
    assert first == {f"q{i}" for i in range(8)}  # the 8 shortest questions of 32
    loader.sampler.set_epoch(2)
    assert {i for b in loader for i in b.ids} == {r["id"] for r in rows}


def test_predict_writes_each_records_teacher_forced_loss(tmp_path):
    from omnifuse.app.predictor import Predictor
    from omnifuse.tasks.config import GenerationConfig

    from .test_finetune_support import tiny_conv_model

    model = tiny_conv_model().eval()
    rows = [{"id": f"q{i}", "task": "vqa", "text": f"is it {w}?", "target": t}
            for i, (w, t) in enumerate([("red", "yes"), ("a circle", "no"), ("blue", "rectangle")])]  # fmt: skip
    rows.append({"id": "no-target", "task": "vqa", "text": "what?"})
    predictor = Predictor(model, generation=GenerationConfig(max_new_tokens=3, with_loss=True), batch_size=4)
    out = {p["id"]: p for p in predictor.predict(rows)["predictions"]}
    assert "loss" not in out["no-target"]
    tok = model.tokenizer
    for r in rows[:3]:  # plain reference: one record at a time, the decoder's log-probabilities of its target
        ids = [tok.task_id("vqa"), *tok.encode(r["target"], add_eos=True)]
        text_ids, text_mask = tok.pad([tok.encode(r["text"])])
        present = torch.tensor([[False, False, True]])
        batch = MultimodalBatch(ids=[r["id"]], tasks=["vqa"], text=text_ids, text_mask=text_mask, present=present)
        with torch.no_grad():
            memory = model.encode(batch)
            logits = model.decoder(torch.tensor([ids[:-1]]), memory.tokens, memory.mask).logits[0]
        expected = -sum(torch.log_softmax(logits[t], -1)[ids[t + 1]].item() for t in range(len(ids) - 1)) / (len(ids) - 1)
        assert out[r["id"]]["loss"] == pytest.approx(expected, abs=1e-5)
