"""``omnifuse score``: predictions of a batch job scored against the manifest, overall and per group. References: plain
loops over the made-up records below (VQA: single easy-VQA-style answers, so accuracy is 1 for a match), the
``jsonschema`` validator for JSON validity, and the caption metric run on each group's records alone."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from omnifuse.app.cli import main
from omnifuse.tasks.metrics import caption_scores, tokenize_caption

VOICES = ["anna", "ben", "cleo"]
SCHEMA = {"type": "object", "properties": {"shape": {"enum": ["circle", "square"]}}, "required": ["shape"]}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def job(tmp_path):
    """A manifest of 12 VQA, 4 caption and 3 JSON records, a predict folder with predictions for most of them, one id
    in errors.jsonl and one never written (a job killed before it)."""
    records, predictions = [], []
    for i in range(12):
        answer = ["red", "circle", "yes"][i % 3]
        guess = answer if i % 4 != 0 else "blue"  # ids 0, 4, 8 wrong
        voice = VOICES[i % 3]
        records.append({"id": f"q{i}", "task": "vqa", "text": "what?", "target": answer,
                        "meta": {"voice": voice, "answer_type": "x"}})  # fmt: skip
        predictions.append({"id": f"q{i}", "task": "vqa", "prediction": guess.upper() if i == 5 else guess})
    captions = ["a red circle", "a blue square", "a big green triangle", "a small red square"]
    for i, caption in enumerate(captions):
        records.append({"id": f"c{i}", "task": "caption", "text": "describe", "target": caption,
                        "meta": {"voice": VOICES[i % 2], "references": [caption, f"there is {caption}"]}})  # fmt: skip
        predictions.append({"id": f"c{i}", "task": "caption", "prediction": caption if i < 2 else "a red circle"})
    outputs = [{"shape": "circle"}, {"shape": "hexagon"}, "not json"]  # as predict writes them: parsed when they parse
    for i, text in enumerate(outputs):
        records.append({"id": f"j{i}", "task": "json", "text": "json", "target": {"shape": "circle"}, "schema": SCHEMA})
        predictions.append({"id": f"j{i}", "task": "json", "prediction": text})
    records.append({"id": "bad", "task": "vqa", "text": "what?", "target": "red", "meta": {"voice": "anna"}})
    records.append({"id": "lost", "task": "vqa", "text": "what?", "target": "red"})
    manifest = _write(tmp_path / "manifest.jsonl", records)
    out = tmp_path / "predict"
    out.mkdir()
    _write(out / "predictions.jsonl", predictions[:10])
    _write(out / "predictions.rank1.jsonl", predictions[10:])  # a second rank's file counts too
    _write(out / "errors.jsonl", [{"id": "bad", "error": "audio: file not found"}])
    return manifest, out, records, {p["id"]: p["prediction"] for p in predictions}


def test_scores_overall_and_per_group_against_plain_loops(job, tmp_path, capsys):
    manifest, out, records, predictions = job
    report = tmp_path / "scores.json"
    assert main(["score", str(out), "--manifest", str(manifest), "--by", "meta.voice", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    scores = result["scores"]

    vqa = [r for r in records if r["task"] == "vqa" and r["id"] in predictions]

    def accuracy(rows: list[dict]) -> float:  # the official formula folds no case when all answers agree ("YES")
        return sum(predictions[r["id"]].strip() == r["target"] for r in rows) / len(rows)

    assert scores["all"]["all"]["vqa"]["vqa_accuracy"] == pytest.approx(accuracy(vqa)) == pytest.approx(8 / 12)
    assert scores["all"]["all"]["vqa"]["n"] == 12
    for voice in VOICES:
        rows = [r for r in vqa if r["meta"]["voice"] == voice]
        assert scores["meta.voice"][voice]["vqa"]["vqa_accuracy"] == pytest.approx(accuracy(rows))
        assert scores["meta.voice"][voice]["vqa"]["n"] == len(rows)

    # CIDEr-D is a corpus metric: a group's figure is the metric over that group's captions alone.
    for voice in VOICES[:2]:
        rows = [r for r in records if r["task"] == "caption" and r["meta"]["voice"] == voice]
        alone = caption_scores({r["id"]: predictions[r["id"]] for r in rows},
                               {r["id"]: r["meta"]["references"] for r in rows}, tokenizer=tokenize_caption)  # fmt: skip
        assert scores["meta.voice"][voice]["caption"]["cider_d"] == pytest.approx(alone["cider_d"])
    assert "caption" not in scores["meta.voice"]["cleo"]

    # JSON records have no voice: their group is "(unset)". Validity by jsonschema itself.
    json_rows = [r for r in records if r["task"] == "json"]
    valid = []
    for r in json_rows:
        try:
            value = predictions[r["id"]]
            value = json.loads(value) if isinstance(value, str) else value
            valid.append(jsonschema.Draft202012Validator(SCHEMA).is_valid(value))
        except ValueError:
            valid.append(False)
    assert scores["meta.voice"]["(unset)"]["json"]["validity"] == pytest.approx(sum(valid) / 3) == pytest.approx(1 / 3)
    assert scores["all"]["all"]["json"]["exact_match"] == pytest.approx(1 / 3)

    # Every manifest id is scored or listed as missing; the errored one is told apart from the one never written.
    assert result["missing"] == ["bad", "lost"]
    printed = capsys.readouterr().out
    assert "2 records have no prediction (1 in errors.jsonl, 1 not in the output at all)" in printed
    assert "by meta.voice:" in printed


def test_refuses_predictions_of_another_manifest_and_names_a_bad_line(job, tmp_path):
    manifest, out, _, _ = job
    with (out / "predictions.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "zz-other", "task": "vqa", "prediction": "red"}) + "\n")
    with pytest.raises(SystemExit, match="1 predictions for ids not in .*zz-other"):
        main(["score", str(out), "--manifest", str(manifest)])
    with (out / "predictions.jsonl").open("a") as fh:
        fh.write('{"task": "vqa"}\n')
    with pytest.raises(SystemExit, match=r"predictions.jsonl:12: field 'id' missing"):
        main(["score", str(out), "--manifest", str(manifest)])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "q1", "task": "vqa", "prediction": "circle"}, None),  # the same again (a resumed job): fine
        ({"id": "q1", "task": "vqa", "prediction": "red"}, r"rank1.jsonl:\d+: record 'q1' has another prediction at "),
        ({"id": "q1", "task": "vqa"}, r"rank1.jsonl:\d+: record 'q1': field 'prediction' missing"),
    ],
    ids=["repeat", "conflict", "no-prediction"],
)
def test_an_id_written_twice_or_without_a_prediction(job, tmp_path, row, message):
    manifest, out, _, _ = job
    with (out / "predictions.rank1.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    if message is None:
        assert main(["score", str(out), "--manifest", str(manifest)]) == 0
    else:
        with pytest.raises(SystemExit, match=message):
            main(["score", str(out), "--manifest", str(manifest)])


def test_a_record_the_job_reported_as_bad_is_missing_and_another_bad_record_stops(job, tmp_path):
    """A record whose audio file is gone cannot be read; the job put it in errors.jsonl, so it is listed as missing.
    The same record without an errors row is a manifest problem, named by record and field."""
    manifest, out, _, _ = job
    rows = manifest.read_text().splitlines()
    rows = [json.dumps({**json.loads(r), "audio": "gone.wav"}) if json.loads(r)["id"] == "bad" else r for r in rows]
    manifest.write_text("\n".join(rows) + "\n")
    report = tmp_path / "scores.json"
    assert main(["score", str(out), "--manifest", str(manifest), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["missing"] == ["bad", "lost"]
    (out / "errors.jsonl").write_text("")
    with pytest.raises(SystemExit, match=r"record 'bad': field 'audio'"):
        main(["score", str(out), "--manifest", str(manifest)])


def test_a_group_field_no_record_has_is_refused(job):
    manifest, out, _, _ = job
    with pytest.raises(SystemExit, match=r"--by meta\.vocie: no record"):
        main(["score", str(out), "--manifest", str(manifest), "--by", "meta.vocie"])


def test_ten_human_answers_use_the_official_formula(tmp_path):
    """Two of ten annotators gave the predicted answer: by hand, 8 leave-one-out subsets hold both (2/3 each) and 2
    hold one (1/3 each), so the official accuracy is (8 * 2/3 + 2 * 1/3) / 10 = 0.6; exact match is 0 (the most
    frequent answer is another)."""
    answers = ["blue"] * 8 + ["red"] * 2
    manifest = _write(tmp_path / "m.jsonl", [{"id": "a", "task": "vqa", "text": "q", "target": "blue",
                                                "meta": {"answers": answers}}])  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    _write(out / "predictions.jsonl", [{"id": "a", "task": "vqa", "prediction": "red"}])
    report = tmp_path / "s.json"
    main(["score", str(out), "--manifest", str(manifest), "--json", str(report)])
    vqa = json.loads(report.read_text())["scores"]["all"]["all"]["vqa"]
    assert vqa["vqa_accuracy"] == pytest.approx(0.6) and vqa["exact_match"] == 0.0


def test_agrees_with_the_lightning_tasks_own_metrics(job, tmp_path):
    """The figures `omnifuse test` logs: each task's update_metrics/compute_metrics fed the same records and outputs
    (json outputs as the model's text, as the task sees them; score reads them as predict writes them)."""
    from types import SimpleNamespace

    from omnifuse.tasks.caption import CaptionTask
    from omnifuse.tasks.structured_task import StructuredTask
    from omnifuse.tasks.vqa import VQATask

    manifest, out, records, predictions = job
    report = tmp_path / "scores.json"
    main(["score", str(out), "--manifest", str(manifest), "--json", str(report)])
    scored = json.loads(report.read_text())["scores"]["all"]["all"]
    for task_class in (VQATask, CaptionTask, StructuredTask):
        rows = [r for r in records if r["task"] == task_class.task and r["id"] in predictions]
        texts = [p if isinstance(p, str) else json.dumps(p) for p in (predictions[r["id"]] for r in rows)]
        batch = SimpleNamespace(meta=[r.get("meta", {}) for r in rows], targets=[r["target"] for r in rows],
                                schemas=[SCHEMA if "schema" in r else None for r in rows])  # fmt: skip
        task = task_class.__new__(task_class)  # the metric methods only; no model is needed
        task.reset_metrics()
        task.update_metrics(texts, batch)
        expected = task.compute_metrics()
        got = {k: v for k, v in scored[task_class.task].items() if k != "n"}
        # The task also logs per-answer-type accuracy (vqa_accuracy/<type>); score gives that with --by meta.answer_type.
        assert set(got) <= set(expected) and len(got) >= 2, task_class.task
        assert got == pytest.approx({k: expected[k] for k in got}), task_class.task


def test_a_line_cut_short_by_a_kill_counts_as_not_predicted(job, tmp_path):
    manifest, out, _, _ = job
    with (out / "predictions.rank1.jsonl").open("a") as fh:
        fh.write('{"id": "lost", "task": "vqa", "predic')  # killed mid-write: no newline, not JSON
    report = tmp_path / "scores.json"
    assert main(["score", str(out), "--manifest", str(manifest), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["missing"] == ["bad", "lost"]
