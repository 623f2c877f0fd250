"""``omnifuse plot``: the tables behind the charts equal means computed directly, and the PNGs draw those numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnifuse.app.cli import main
from omnifuse.app.plots import MODALITY_COLORS, plot_predictions

N_LAYERS, N_EXPERTS = 2, 6
VIEWS = {"text": ("image", "text"), "audio": ("image", "audio"), "both": ("image", "audio", "text")}


def _fake_predictions(view: str, n: int, seed: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rows shaped like predictions.jsonl, plus the raw weights (n, modalities) and expert counts (n, L, E)."""
    rng = np.random.default_rng(seed)
    modalities = VIEWS[view]
    # Skewed per view so that the bars differ visibly.
    alpha = np.array([1.0 + 3.0 * (i == len(modalities) - 1) for i in range(len(modalities))])
    weights = rng.dirichlet(alpha, size=n)  # (n, M), rows sum to 1 like the gate's
    counts = rng.integers(0, 5, size=(n, N_LAYERS, N_EXPERTS)) * (rng.random((n, N_LAYERS, N_EXPERTS)) < 0.6)
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": f"{view}-{i}",
                "task": "vqa",
                "prediction": "red",
                "modality_weights": {m: round(float(w), 6) for m, w in zip(modalities, weights[i])},
                "experts": [{str(e): int(c) for e, c in enumerate(layer) if c} for layer in counts[i]],
            }
        )
    # What the file holds is rounded to 6 places; means are compared against those values.
    rounded = np.array([[r["modality_weights"][m] for m in modalities] for r in rows])
    return rows, rounded, counts


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def views(tmp_path: Path):
    out = {}
    for seed, view in enumerate(VIEWS):
        rows, weights, counts = _fake_predictions(view, 40 + 7 * seed, seed)
        out[view] = (_write(tmp_path / f"{view}.jsonl", rows), weights, counts)
    return out


def _bar_height_in_pixels(png: Image.Image, x: int, y_zero: int, color: tuple[int, int, int]) -> int:
    """Count pixels of ``color`` going up from the zero line in column x."""
    height, y = 0, y_zero - 1
    while y >= 0 and png.getpixel((x, y)) == color:
        height += 1
        y -= 1
    return height


def test_plot_command_draws_the_means_of_the_jsonl(views, tmp_path: Path):
    files = [str(views[v][0]) for v in VIEWS]
    out = tmp_path / "plots"
    assert main(["plot", "--predictions", ",".join(files), "--labels", ",".join(VIEWS), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("modality_weights.png", "routing.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200

    result = plot_predictions(files, tmp_path / "again", labels=list(VIEWS))
    assert result.weights == summary["modality_weights"]
    assert result.counts == {v: len(views[v][1]) for v in VIEWS}
    png = Image.open(result.files["weights"]).convert("RGB")
    geometry = result.bar_chart
    assert len(geometry.bars) == sum(len(m) for m in VIEWS.values())  # no bar for a modality a view lacks
    for view, modalities in VIEWS.items():
        _, weights, counts = views[view]
        expected = dict(zip(modalities, weights.mean(axis=0)))  # computed here, directly from the rows
        assert set(summary["modality_weights"][view]) == set(modalities)
        for m in modalities:
            cell = summary["modality_weights"][view][m]
            assert cell["mean"] == pytest.approx(expected[m], abs=1e-12)
            assert cell["n"] == len(weights)
            # The bar's height as drawn, measured from the PNG's pixels.
            (bar,) = [b for b in geometry.bars if b.group == view and b.modality == m]
            x = (bar.box[0] + bar.box[2]) // 2
            drawn = _bar_height_in_pixels(png, x, geometry.y_zero, MODALITY_COLORS[m])
            assert abs(drawn - expected[m] * geometry.plot_height) <= 1.0, (view, m)

        # Routing shares: summed counts per layer and expert, normalised per layer.
        totals = counts.sum(axis=0)  # (L, E)
        shares = totals / totals.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(np.array(summary["routing_shares"][view]), shares, rtol=0, atol=1e-12)

    # Heatmap colours are ordered like the shares: a larger share is never drawn lighter.
    heat = Image.open(result.files["routing"]).convert("L")
    cells = []
    for (view, layer, expert), (x0, y0, _, _) in result.heatmap.cells.items():
        cells.append((summary["routing_shares"][view][layer][expert], heat.getpixel((x0 + 3, y0 + 4))))
    cells.sort()
    lightness = [light for _, light in cells]
    assert all(a >= b for a, b in zip(lightness, lightness[1:]))
    assert lightness[0] > lightness[-1]


def test_single_file_is_split_by_the_modalities_each_row_has(views, tmp_path: Path):
    rows = []
    for view in VIEWS:
        rows += [json.loads(line) for line in views[view][0].read_text().splitlines()]
    merged = _write(tmp_path / "merged.jsonl", rows)
    result = plot_predictions([merged], tmp_path / "out")
    assert set(result.weights) == {"image+text", "image+audio", "image+audio+text"}
    for view, key in (("text", "image+text"), ("audio", "image+audio"), ("both", "image+audio+text")):
        _, weights, _ = views[view]
        means = {m: result.weights[key][m]["mean"] for m in VIEWS[view]}
        np.testing.assert_allclose([means[m] for m in VIEWS[view]], weights.mean(axis=0), rtol=0, atol=1e-12)


def test_plot_command_reports_bad_input(tmp_path: Path, capsys):
    good = _write(tmp_path / "a.jsonl", _fake_predictions("text", 3, 0)[0])
    out = str(tmp_path / "o")
    assert main(["plot", "--predictions", str(good), "--labels", "a,b", "--out", out]) == 2
    assert "label" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n[1, 2]\n')
    assert main(["plot", "--predictions", str(tmp_path / "bad.jsonl"), "--out", out]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
