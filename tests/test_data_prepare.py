"""``omnifuse prepare easyvqa`` command line."""

from __future__ import annotations

import json
from pathlib import Path

from omnifuse.data.prepare import main


def test_prepare_cli_prints_counts(tmp_path: Path, capsys):
    out = tmp_path / "ev"
    assert main(["easyvqa", "--out", str(out), "--parts", "vqa,json", "--limit-images", "5"]) == 0
    printed = capsys.readouterr().out
    for part in ("vqa", "json"):
        for split in ("train", "val", "test"):
            lines = (out / f"{part}_{split}.jsonl").read_text().splitlines()
            assert all(json.loads(line)["task"] == part for line in lines)
            row = next(line for line in printed.splitlines() if line.startswith(f"{part}_{split} "))
            assert int(row.split()[1].replace(",", "")) == len(lines)
    assert (out / "scene.schema.json").is_file() and not (out / "caption_train.jsonl").exists()


def test_prepare_cli_rejects_unknown_part(tmp_path: Path, capsys):
    assert main(["easyvqa", "--out", str(tmp_path), "--parts", "vqa,segmentation"]) == 2
    assert "segmentation" in capsys.readouterr().err
