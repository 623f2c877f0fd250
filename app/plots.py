"""``omnifuse plot``: PNG charts of the modality gate and the MoE routing, drawn from prediction files.

Input: one or more ``predictions.jsonl`` (``omnifuse predict`` output), e.g. one per test view of the mixed model. Each
row carries ``modality_weights`` (``{modality: weight}`` for the modalities the sample has) and ``experts`` (per MoE
layer, ``{expert index: generated tokens routed to it}``). Rows are grouped by file (``--labels`` names the groups),
or, for a single file without labels, by the set of modalities each row has (``image+text``, ``image+audio``...).

Output (``--out DIR``):

- ``modality_weights.png``: bar chart, per group, of the mean gate weight of each modality over the rows that have it;
- ``routing.png``: heatmap, one row per (group, MoE layer), one column per expert: the share of that layer's routed
  token copies that went to the expert (each row sums to 1);
- ``summary.json``: the tables behind both charts (``weight_table`` / ``routing_table``), so numbers can be read
  without the pictures.

Drawn with PIL only (no matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from omnifuse.data.batch import MODALITIES

WEIGHTS_PNG = "modality_weights.png"
ROUTING_PNG = "routing.png"
SUMMARY_JSON = "summary.json"

# One fixed colour per modality (colour-blind-safe Okabe-Ito hues), so charts of different runs read the same way.
MODALITY_COLORS: dict[str, tuple[int, int, int]] = {
    "image": (0, 114, 178),
    "audio": (230, 159, 0),
    "text": (0, 158, 115),
}
_FALLBACK_COLORS = [(204, 121, 167), (86, 180, 233), (213, 94, 0), (120, 120, 120)]
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)


# ------------------------------------------------------------------------------------------------------------ reading


def read_predictions(path: str | Path) -> list[dict]:
    """Rows of a predictions JSONL (blank lines skipped); a line that is not a JSON object raises naming the line."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def view_of(row: Mapping) -> str:
    """The modalities a prediction row has, in ``MODALITIES`` order and joined by ``+`` (``image+text``)."""
    present = row.get("modality_weights") or {}
    names = [m for m in MODALITIES if m in present] + sorted(m for m in present if m not in MODALITIES)
    return "+".join(names) or "none"


def group_predictions(files: Sequence[str | Path], labels: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """``{label: rows}``: one group per file (labels default to the file stems), or, for a single unlabelled file,
    one group per modality set (``view_of``)."""
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"got {len(files)} prediction file(s) but {len(labels)} label(s)")
    if labels is None and len(files) == 1:
        groups: dict[str, list[dict]] = {}
        for row in read_predictions(files[0]):
            groups.setdefault(view_of(row), []).append(row)
        return dict(sorted(groups.items()))
    names = list(labels) if labels is not None else [Path(f).stem for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"labels must be distinct, got {names}")
    return {name: read_predictions(f) for name, f in zip(names, files)}


# ------------------------------------------------------------------------------------------------------------- tables


def weight_table(groups: Mapping[str, Iterable[dict]]) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{group: {modality: {"mean": mean weight, "n": rows having it}}}``; a modality no row of a group has is left
    out of that group (its weight would be 0 by construction, which says nothing)."""
    table: dict[str, dict[str, dict[str, float | int]]] = {}
    for name, rows in groups.items():
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for row in rows:
            for modality, weight in (row.get("modality_weights") or {}).items():
                sums[modality] = sums.get(modality, 0.0) + float(weight)
                counts[modality] = counts.get(modality, 0) + 1
        order = [m for m in MODALITIES if m in sums] + sorted(m for m in sums if m not in MODALITIES)
        table[name] = {m: {"mean": sums[m] / counts[m], "n": counts[m]} for m in order}
    return table


def routing_table(groups: Mapping[str, Iterable[dict]]) -> dict[str, list[list[float]]]:
    """``{group: shares[layer][expert]}``: the share of each MoE layer's routed token copies that went to each expert,
    summed over the group's rows. Every group has the same (layers, experts) shape, the largest seen; a layer with no
    tokens is all 0."""
    totals: dict[str, list[dict[int, int]]] = {}
    n_layers = n_experts = 0
    for name, rows in groups.items():
        layers: list[dict[int, int]] = []
        for row in rows:
            for i, usage in enumerate(row.get("experts") or []):
                while len(layers) <= i:
                    layers.append({})
                for expert, count in usage.items():
                    e = int(expert)
                    layers[i][e] = layers[i].get(e, 0) + int(count)
                    n_experts = max(n_experts, e + 1)
        totals[name] = layers
        n_layers = max(n_layers, len(layers))
    table: dict[str, list[list[float]]] = {}
    for name, layers in totals.items():
        shares = []
        for i in range(n_layers):
            counts = layers[i] if i < len(layers) else {}
            total = sum(counts.values())
            shares.append([counts.get(e, 0) / total if total else 0.0 for e in range(n_experts)])
        table[name] = shares
    return table


# ------------------------------------------------------------------------------------------------------------ drawing


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def _modality_color(modality: str) -> tuple[int, int, int]:
    if modality in MODALITY_COLORS:
        return MODALITY_COLORS[modality]
    return _FALLBACK_COLORS[sum(map(ord, modality)) % len(_FALLBACK_COLORS)]


@dataclass(frozen=True)
class Bar:
    """Where one bar of the weight chart was drawn: pixel box ``(x0, y0, x1, y1)`` (y1 = the zero line, exclusive
    edges as in PIL) and the value it shows."""

    group: str
    modality: str
    value: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class BarChartGeometry:
    """The weight chart's axes: value v is drawn at pixel row ``y_zero - v * plot_height``."""

    y_zero: int
    plot_height: int
    bars: list[Bar]


def draw_weight_chart(table: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path) -> BarChartGeometry:
    """Grouped bar chart of ``weight_table`` output: one group of bars per view, one bar per modality, y in [0, 1]."""
    groups = list(table)
    modalities = [m for m in MODALITIES if any(m in table[g] for g in groups)]
    modalities += sorted({m for g in groups for m in table[g]} - set(modalities))
    font, small = _font(16), _font(13)
    bar_w, gap, group_gap = 46, 6, 40
    n_bars = max(1, len(modalities))
    group_w = n_bars * bar_w + (n_bars - 1) * gap
    left, right, top, bottom = 70, 150, 50, 60
    plot_h = 400
    width = left + max(1, len(groups)) * (group_w + group_gap) + group_gap + right
    height = top + plot_h + bottom
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    y_zero = top + plot_h
    title = "mean modality weight (gate) per test view"
    draw.text((left, 14), title, fill=INK, font=font)
    for tick in range(0, 11, 2):  # y axis: 0.0, 0.2, ..., 1.0
        y = y_zero - round(tick / 10 * plot_h)
        draw.line([(left, y), (width - right, y)], fill=GRID, width=1)
        label = f"{tick / 10:.1f}"
        tw, th = _text_size(draw, label, small)
        draw.text((left - 8 - tw, y - th // 2 - 2), label, fill=INK, font=small)
    bars: list[Bar] = []
    for gi, group in enumerate(groups):
        x_group = left + group_gap + gi * (group_w + group_gap)
        for mi, modality in enumerate(modalities):
            x0 = x_group + mi * (bar_w + gap)
            cell = table[group].get(modality)
            if cell is None:
                na = "n/a"
                tw, _ = _text_size(draw, na, small)
                draw.text((x0 + (bar_w - tw) // 2, y_zero - 18), na, fill=(150, 150, 150), font=small)
                continue
            value = float(cell["mean"])
            y_top = y_zero - round(min(max(value, 0.0), 1.0) * plot_h)
            if y_top < y_zero:
                draw.rectangle([x0, y_top, x0 + bar_w - 1, y_zero - 1], fill=_modality_color(modality))
            bars.append(Bar(group, modality, value, (x0, y_top, x0 + bar_w, y_zero)))
            label = f"{value:.2f}"
            tw, th = _text_size(draw, label, small)
            draw.text((x0 + (bar_w - tw) // 2, y_top - th - 6), label, fill=INK, font=small)
        tw, _ = _text_size(draw, group, font)
        draw.text((x_group + (group_w - tw) // 2, y_zero + 12), group, fill=INK, font=font)
    draw.line([(left, y_zero), (width - right, y_zero)], fill=INK, width=1)
    draw.line([(left, top), (left, y_zero)], fill=INK, width=1)
    for mi, modality in enumerate(modalities):  # legend
        y = top + 10 + mi * 24
        x = width - right + 20
        draw.rectangle([x, y, x + 16, y + 16], fill=_modality_color(modality))
        draw.text((x + 24, y), modality, fill=INK, font=font)
    image.save(path, format="PNG")
    return BarChartGeometry(y_zero=y_zero, plot_height=plot_h, bars=bars)


def _heat_color(share: float, peak: float) -> tuple[int, int, int]:
    """White (0) -> dark blue (``peak``)."""
    t = 0.0 if peak <= 0 else min(max(share / peak, 0.0), 1.0)
    low, high = (247, 251, 255), (8, 48, 107)
    return tuple(round(a + t * (b - a)) for a, b in zip(low, high))


@dataclass(frozen=True)
class HeatmapGeometry:
    """Where the routing heatmap's cells were drawn: ``cells[(group, layer, expert)] = (x0, y0, x1, y1)``; colour
    saturates at ``peak`` (the largest share shown)."""

    cells: dict[tuple[str, int, int], tuple[int, int, int, int]]
    peak: float


def draw_routing_heatmap(table: Mapping[str, Sequence[Sequence[float]]], path: str | Path) -> HeatmapGeometry:
    """Heatmap of ``routing_table`` output: rows (group, layer), columns experts, cell = share of routed tokens."""
    rows = [(g, i, shares) for g, layers in table.items() for i, shares in enumerate(layers)]
    n_experts = max((len(s) for _, _, s in rows), default=0)
    peak = max((v for _, _, s in rows for v in s), default=0.0)
    font, small = _font(16), _font(12)
    cell_w, cell_h = 58, 30
    left, top, right, bottom = 150, 80, 30, 50
    width = left + max(1, n_experts) * cell_w + right
    height = top + max(1, len(rows)) * cell_h + bottom
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((10, 12), "share of routed tokens per expert, per MoE layer and test view", fill=INK, font=font)
    for e in range(n_experts):
        label = f"e{e}"
        tw, _ = _text_size(draw, label, small)
        draw.text((left + e * cell_w + (cell_w - tw) // 2, top - 22), label, fill=INK, font=small)
    cells: dict[tuple[str, int, int], tuple[int, int, int, int]] = {}
    previous = None
    for r, (group, layer, shares) in enumerate(rows):
        y0 = top + r * cell_h
        if previous is not None and group != previous:
            draw.line([(10, y0), (width - right, y0)], fill=INK, width=1)
        previous = group
        label = f"{group}  L{layer}"
        _, th = _text_size(draw, label, small)
        draw.text((10, y0 + (cell_h - th) // 2 - 2), label, fill=INK, font=small)
        for e in range(n_experts):
            share = shares[e] if e < len(shares) else 0.0
            x0 = left + e * cell_w
            box = (x0, y0, x0 + cell_w, y0 + cell_h)
            fill = _heat_color(share, peak)
            draw.rectangle([x0, y0 + 1, x0 + cell_w - 2, y0 + cell_h - 2], fill=fill)
            cells[(group, layer, e)] = box
            text = f"{share:.2f}"
            tw, th = _text_size(draw, text, small)
            ink = BACKGROUND if sum(fill) < 3 * 140 else INK
            draw.text((x0 + (cell_w - tw) // 2, y0 + (cell_h - th) // 2 - 2), text, fill=ink, font=small)
    draw.text((left, height - bottom + 14), f"colour scale: 0 (white) .. {peak:.2f} (dark)", fill=INK, font=small)
    image.save(path, format="PNG")
    return HeatmapGeometry(cells=cells, peak=peak)


# ---------------------------------------------------------------------------------------------------------------- api


@dataclass
class PlotResult:
    """What ``plot_predictions`` computed and wrote."""

    weights: dict[str, dict[str, dict[str, float | int]]]
    routing: dict[str, list[list[float]]]
    counts: dict[str, int]
    files: dict[str, Path]
    bar_chart: BarChartGeometry
    heatmap: HeatmapGeometry


def plot_predictions(
    files: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None
) -> PlotResult:
    """Read prediction files, compute the weight and routing tables, write the two PNGs and ``summary.json``."""
    groups = group_predictions(files, labels)
    empty = [name for name, rows in groups.items() if not rows]
    if empty:
        raise ValueError(f"no prediction rows for {empty}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = weight_table(groups)
    routing = routing_table(groups)
    counts = {name: len(rows) for name, rows in groups.items()}
    files_out = {"weights": out / WEIGHTS_PNG, "routing": out / ROUTING_PNG, "summary": out / SUMMARY_JSON}
    bar_chart = draw_weight_chart(weights, files_out["weights"])
    heatmap = draw_routing_heatmap(routing, files_out["routing"])
    summary = {
        "inputs": [str(f) for f in files],
        "rows": counts,
        "modality_weights": weights,
        "routing_shares": routing,
    }
    files_out["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return PlotResult(weights, routing, counts, files_out, bar_chart, heatmap)


def format_weight_table(weights: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    modalities = [m for m in MODALITIES if any(m in w for w in weights.values())]
    lines = [f"{'view':16s}" + "".join(f"{m:>10s}" for m in modalities)]
    for name, row in weights.items():
        cells = "".join(f"{row[m]['mean']:10.3f}" if m in row else f"{'-':>10s}" for m in modalities)
        lines.append(f"{name:16s}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``omnifuse plot --predictions a.jsonl[,b.jsonl] [--labels text,audio] --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="omnifuse plot",
        description="Draw mean modality weights (bar chart) and MoE routing shares (heatmap) from predictions.jsonl.",
    )
    parser.add_argument("--predictions", required=True, help="comma-separated predictions.jsonl files (one per view)")
    parser.add_argument("--labels", default=None, help="comma-separated group names, one per file (default: stems)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and summary.json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    files = [f.strip() for f in args.predictions.split(",") if f.strip()]
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    try:
        result = plot_predictions(files, args.out, labels)
    except (OSError, ValueError) as e:
        print(f"omnifuse plot: error: {e}", file=sys.stderr)
        return 2
    print(format_weight_table(result.weights))
    for kind, path in result.files.items():
        print(f"{kind:8s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
