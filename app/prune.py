"""``omnifuse prune``: drop the routed experts a model uses least, measured on a calibration manifest.

    omnifuse prune runs/easyvqa/latest/checkpoints/best.ckpt --calib datasets/easyvqa/vqa_val.jsonl \\
        --drop-experts 0.25 --out runs/easyvqa/pruned

Predicts the calibration manifest with the model (the batch job's path), sums the router telemetry every prediction
row carries (``experts``: generated tokens per expert and MoE layer), removes the least used ``FRACTION`` of the routed
experts from every MoE layer (``omnifuse.moe_core.prune``) and writes the smaller model as an export folder
(``config.json`` + ``model.safetensors``) with ``prune.json``, the usage and the experts kept. The folder predicts,
serves, and fine-tunes like any other (``init_from: OUT`` with ``decoder.n_routed_experts`` set to the new count).
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
    parser.add_argument("--calib", required=True, help="calibration manifest (JSONL), e.g. the validation split")
    parser.add_argument("--drop-experts", type=float, required=True, help="fraction of routed experts to remove")
    parser.add_argument("--out", required=True, help="output folder (config.json + model.safetensors + prune.json)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    from omnifuse.app.predictor import Predictor
    from omnifuse.moe_core.prune import experts_to_keep, prune_experts

    def refuse(message: str) -> int:
        print(f"omnifuse prune: {message}", file=sys.stderr)
        return 2

    if not 0.0 <= args.drop_experts < 1.0:
        return refuse(f"--drop-experts must be in [0, 1), got {args.drop_experts}")
    manifest = Path(args.calib)
    if not manifest.is_file():
        return refuse(f"no calibration manifest at {manifest}")
    predictor = Predictor.from_pretrained(args.model, batch_size=args.batch_size)
    model, decoder = predictor.model, predictor.model.decoder
    n_experts, n_layers = decoder.config.n_routed_experts, decoder.n_moe_layers
    if n_layers == 0:
        return refuse(f"{args.model} has no MoE layer (n_dense_layers = n_layers): there are no experts to drop")
    n_drop = math.floor(args.drop_experts * n_experts + 1e-9)
    if n_experts - n_drop < decoder.config.top_k:
        return refuse(
            f"--drop-experts {args.drop_experts} leaves {n_experts - n_drop} of {n_experts} experts; at least "
            f"top_k={decoder.config.top_k} must stay"
        )
    out = predictor.predict(manifest)  # the batch job's path: every record predicted or reported as an error
    usage = expert_usage(out["predictions"], n_layers, n_experts)
    if int(usage.sum()) == 0:
        first = out["errors"][0]["error"] if out["errors"] else "no records"
        return refuse(
            f"no calibration record was predicted ({len(out['errors'])} errors, e.g. {first}): no usage to rank "
            "experts by"
        )
    keep = experts_to_keep(usage, n_drop)
    params_before = sum(p.numel() for p in model.parameters())
    prune_experts(decoder, keep)
    params_after = sum(p.numel() for p in model.parameters())
    folder = Path(model.save_pretrained(args.out))
    total = usage.sum(dim=1).clamp(min=1)
    kept_share = [float(usage[layer, keep[layer]].sum() / total[layer]) for layer in range(n_layers)]
    report = {
        "source": str(args.model),
        "calibration": {"manifest": str(manifest), "records": len(out["predictions"]), "errors": len(out["errors"])},
        "drop_fraction": args.drop_experts,
        "experts": {"before": n_experts, "after": n_experts - n_drop},
        "parameters": {"before": params_before, "after": params_after},
        "usage": usage.tolist(),
        "kept": [k.tolist() for k in keep],
        "kept_usage_share": kept_share,
    }
    (folder / "prune.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"omnifuse prune: {n_experts} -> {n_experts - n_drop} routed experts per MoE layer, parameters "
        f"{params_before:,} -> {params_after:,}; the kept experts took "
        + ", ".join(f"{100 * s:.1f} %" for s in kept_share)
        + f" of layer routing on {len(out['predictions'])} calibration records -> {folder}"
    )
    return 0


main.__doc__ = "Remove the least used routed experts (measured on a calibration manifest); write a smaller model."

if __name__ == "__main__":
    sys.exit(main())
