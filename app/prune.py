"""``omnifuse prune``: drop the routed experts a model uses least, measured on a calibration manifest, and/or the
least important hidden channels of every routed expert.

    omnifuse prune runs/easyvqa/latest/checkpoints/best.ckpt --calib datasets/easyvqa/vqa_val.jsonl \\
        --drop-experts 0.25 [--expert-channels 0.5] --out runs/easyvqa/pruned

Predicts the calibration manifest with the model (the batch job's path), sums the router telemetry every prediction
row carries (``experts``: generated tokens per expert and MoE layer), removes the least used ``FRACTION`` of the routed
experts from every MoE layer (``omnifuse.moe_core.prune``) and writes the smaller model as an export folder
(``config.json`` + ``model.safetensors``) with ``prune.json``, the usage and the experts kept. The folder predicts,
serves, and fine-tunes like any other (``init_from: OUT`` with ``decoder.n_routed_experts`` set to the new count;
after ``--expert-channels`` also ``decoder.d_expert`` and ``decoder.d_shared``, as in prune.json and config.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch


def expert_usage(rows: list[dict], n_layers: int, n_experts: int) -> torch.Tensor:
    """``(n_layers, n_experts)`` generated tokens per expert, summed over prediction rows' ``experts`` field."""
    usage = torch.zeros(n_layers, n_experts, dtype=torch.long)
    for row in rows:
        for layer, counts in enumerate(row.get("experts", [])):
            for expert, count in counts.items():
                usage[layer, int(expert)] += int(count)
    return usage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnifuse prune", description=main.__doc__)
    parser.add_argument("model", help="a .ckpt written by omnifuse fit, or an omnifuse export folder")
    parser.add_argument("--calib", help="calibration manifest (JSONL), e.g. the validation split (--drop-experts)")
    parser.add_argument("--drop-experts", type=float, default=0.0, help="fraction of routed experts to remove")
    parser.add_argument(
        "--expert-channels",
        type=float,
        default=0.0,
        help="fraction of every routed expert's hidden channels to remove, the least important by the product of "
        "their gate, up and down weight norms (no calibration needed)",
    )
    parser.add_argument("--out", required=True, help="output folder (config.json + model.safetensors + prune.json)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    from omnifuse.app.predictor import Predictor
    from omnifuse.moe_core.prune import experts_to_keep, prune_expert_channels, prune_experts

    def refuse(message: str) -> int:
        print(f"omnifuse prune: {message}", file=sys.stderr)
        return 2

    for flag, value in (("--drop-experts", args.drop_experts), ("--expert-channels", args.expert_channels)):
        if not 0.0 <= value < 1.0:
            return refuse(f"{flag} must be in [0, 1), got {value}")
    if args.drop_experts == 0 and args.expert_channels == 0:
        return refuse("nothing to prune: give --drop-experts and/or --expert-channels")
    manifest = Path(args.calib) if args.calib else None
    if args.drop_experts and (manifest is None or not manifest.is_file()):
        return refuse(f"--drop-experts ranks experts by their use on --calib: no calibration manifest at {manifest}")
    predictor = Predictor.from_pretrained(args.model, batch_size=args.batch_size)
    model, decoder = predictor.model, predictor.model.decoder
    n_experts, n_layers = decoder.config.n_routed_experts, decoder.n_moe_layers
    if n_layers == 0:
        return refuse(f"{args.model} has no MoE layer (n_dense_layers = n_layers): there are no experts to prune")
    if getattr(model, "quantization", None):
        return refuse(f"{args.model} is quantized ({model.quantization}): prune the fp32 model, then quantize")
    n_drop = math.floor(args.drop_experts * n_experts + 1e-9)
    if args.drop_experts and n_drop == 0:
        return refuse(f"--drop-experts {args.drop_experts} of {n_experts} experts drops none (at least 1/{n_experts})")
    if n_experts - n_drop < decoder.config.top_k:
        return refuse(
            f"--drop-experts {args.drop_experts} leaves {n_experts - n_drop} of {n_experts} experts; at least "
            f"top_k={decoder.config.top_k} must stay"
        )
    params_before = sum(p.numel() for p in model.parameters())
    d_expert_before = decoder.config.d_expert
    report: dict = {"source": str(args.model), "drop_fraction": args.drop_experts}
    if n_drop:
        out = predictor.predict(manifest)  # the batch job's path: every record predicted or reported as an error
        usage = expert_usage(out["predictions"], n_layers, n_experts)
        if int(usage.sum()) == 0:
            first = out["errors"][0]["error"] if out["errors"] else "no records"
            return refuse(
                f"no calibration record was predicted ({len(out['errors'])} errors, e.g. {first}): no usage to rank "
                "experts by"
            )
        keep = experts_to_keep(usage, n_drop)
        prune_experts(decoder, keep)
        total = usage.sum(dim=1).clamp(min=1)
        report.update(
            calibration={"manifest": str(manifest), "records": len(out["predictions"]), "errors": len(out["errors"])},
            usage=usage.tolist(),
            kept=[k.tolist() for k in keep],
            kept_usage_share=[float(usage[layer, keep[layer]].sum() / total[layer]) for layer in range(n_layers)],
        )
    if args.expert_channels:
        kept_channels = prune_expert_channels(decoder, args.expert_channels)
        report["channels"] = {
            "fraction": args.expert_channels,
            "score": "|gate column| * |up column| * |down row| per hidden channel",
            "d_expert": {"before": d_expert_before, "after": decoder.config.d_expert},
            "kept": [k.tolist() for k in kept_channels],
        }
    params_after = sum(p.numel() for p in model.parameters())
    folder = Path(model.save_pretrained(args.out))
    report["experts"] = {"before": n_experts, "after": n_experts - n_drop}
    report["parameters"] = {"before": params_before, "after": params_after}
    (folder / "prune.json").write_text(json.dumps(report, indent=2) + "\n")
    shares = report.get("kept_usage_share")
    print(
        f"omnifuse prune: {n_experts} -> {n_experts - n_drop} routed experts per MoE layer, expert width "
        f"{d_expert_before} -> {decoder.config.d_expert}, parameters {params_before:,} -> {params_after:,}"
        + (f"; the kept experts took {', '.join(f'{100 * s:.1f} %' for s in shares)} of layer routing" if shares else "")
        + f" -> {folder}"
    )
    return 0


main.__doc__ = (
    "Remove the least used routed experts (measured on a calibration manifest) and/or the least important hidden "
    "channels of every expert; write a smaller model."
)

if __name__ == "__main__":
    sys.exit(main())
