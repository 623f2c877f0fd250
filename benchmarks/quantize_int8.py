"""INT8 inference against fp32 on trained checkpoints: size on disk, records/s of batch inference, test accuracy.

    python benchmarks/quantize_int8.py --ckpts runs/recipe_2500/seed_{0,1,2}/version_0/checkpoints/best.ckpt \\
        [--speed-records 1024]

Per checkpoint: the fp32 export and the ``--quantize int8`` export (``omnifuse export``'s code path) of the same
model; the test split's accuracy of each (batch job, greedy, 12 new tokens); records/s of ``Predictor`` at batch 64
and at batch 1 on the first ``--speed-records`` test questions (a quarter of them at batch 1), after a warm-up, the
two models timed alternately. Prints one table (median over the checkpoints, worst accuracy) with the int8 / fp32
ratios. Run it alone: the throughput is a wall-clock figure. A measured table, never pass/fail.

``--kernels`` prints, instead, the int8 linear kernel the export runs (``moe_core.quantized.qlinear``: activations
quantized per call, int8 GEMM) against fp32 ``F.linear`` at this model's widths and at growing row counts: where on
this CPU int8 compute starts to pay.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from adaptive_routing import evaluate  # accuracy through the batch job, scored like omnifuse score


def records_per_second(model, records: list[dict], root: Path, batch: int) -> float:
    from omnifuse.app.predictor import Predictor
    from omnifuse.tasks.config import GenerationConfig

    predictor = Predictor(model, generation=GenerationConfig(max_new_tokens=12), batch_size=batch, image_size=64)
    predictor.predict(records[: max(batch, 32)], root=root)  # warm-up: kernels, packed weights, decoded images
    start = time.perf_counter()
    predictor.predict(records, root=root)
    return len(records) / (time.perf_counter() - start)


def kernel_table() -> None:
    """fp32 ``F.linear`` against the export's int8 kernel, microseconds per call, side by side."""
    import torch
    import torch.nn.functional as F

    from omnifuse.moe_core.quantized import pack, qlinear, quantize_per_channel

    def per_call(fn, repeats: int) -> float:
        for _ in range(max(5, repeats // 10)):
            fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1e6 * (time.perf_counter() - start) / repeats

    print(f"threads={torch.get_num_threads()}; us per call, median of 3")
    print(f"{'rows x in -> out':>22s} {'fp32':>9s} {'int8':>9s} {'int8 / fp32 speed':>18s}")
    generator = torch.Generator().manual_seed(0)
    # rows: a routed expert's share of a batch-64 decoding step (16), a decoding step (64), a batch's encoder tokens
    # (384), and larger; widths: this model's 128 -> 128 / 512, and 512 -> 512
    for rows, d_in, d_out in [(16, 128, 256), (64, 128, 128), (64, 128, 512), (384, 128, 384), (1024, 128, 512),
                              (1024, 512, 512), (4096, 512, 512)]:  # fmt: skip
        x = torch.randn(rows, d_in, generator=generator)
        w, b = torch.randn(d_out, d_in, generator=generator), torch.randn(d_out, generator=generator)
        packed = pack(*quantize_per_channel(w), b)
        repeats = min(500, max(20, int(2e9 / (rows * d_in * d_out))))  # ~0.1-0.5 s per figure
        fp32 = statistics.median(per_call(lambda x=x, w=w, b=b: F.linear(x, w, b), repeats) for _ in range(3))
        int8 = statistics.median(per_call(lambda x=x, p=packed: qlinear(x, p), repeats) for _ in range(3))
        print(f"{f'{rows} x {d_in} -> {d_out}':>22s} {fp32:9.1f} {int8:9.1f} {fp32 / int8:17.2f}x")


def main(argv: list[str] | None = None) -> None:
    from omnifuse.data.records import read_manifest
    from omnifuse.tasks.model import OmniModel
    from omnifuse.tasks.quantize import quantize_int8

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpts", nargs="+")
    parser.add_argument("--kernels", action="store_true", help="the int8 / fp32 linear kernel table only")
    parser.add_argument("--test", default="datasets/easyvqa/vqa_test.jsonl")
    parser.add_argument("--speed-records", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.kernels:
        kernel_table()
        return
    if not args.ckpts:
        parser.error("--ckpts is required (or --kernels)")
    test = Path(args.test)
    parsed = [r for r in read_manifest(test) if not isinstance(r, Exception)][: args.speed_records]
    records = [{"id": r.id, "task": r.task, "image": str(r.image), "text": r.text} for r in parsed]
    rows: dict[str, list[dict]] = {"fp32": [], "int8": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n, ckpt in enumerate(args.ckpts):
            folders = {
                "fp32": OmniModel.from_pretrained(ckpt).eval().save_pretrained(Path(tmp) / f"{n}_fp32"),
                "int8": quantize_int8(OmniModel.from_pretrained(ckpt).eval()).save_pretrained(Path(tmp) / f"{n}_int8"),
            }
            models = {k: OmniModel.from_pretrained(v) for k, v in folders.items()}  # as a user loads the exports
            result = {k: {"mb": (folders[k] / "model.safetensors").stat().st_size / 2**20} for k in folders}
            for k, model in models.items():
                result[k]["accuracy"] = evaluate(model, test)["accuracy"]
            order = ["fp32", "int8"] if n % 2 == 0 else ["int8", "fp32"]
            for batch, subset in ((64, records), (1, records[: len(records) // 4])):
                for k in order:
                    result[k][f"rec_s_b{batch}"] = records_per_second(models[k], subset, Path("/"), batch)
            for k in rows:
                rows[k].append(result[k])
            print(f"checkpoint {n} ({ckpt}): {result}", flush=True)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[kind])

    print(f"\nINT8 vs fp32, {len(args.ckpts)} checkpoints (median; accuracy median / worst); test split {test}")
    print(f"{'model':6s} {'MB':>7s} {'test acc %':>16s} {'records/s b64':>14s} {'records/s b1':>13s}")
    for kind in rows:
        accs = [r["accuracy"] for r in rows[kind]]
        print(
            f"{kind:6s} {med(kind, 'mb'):7.2f} {statistics.median(accs):8.2f} / {min(accs):5.2f} "
            f"{med(kind, 'rec_s_b64'):14.1f} {med(kind, 'rec_s_b1'):13.1f}"
        )
    ratio = {
        key: statistics.median(q[key] / f[key] for q, f in zip(rows["int8"], rows["fp32"], strict=True))
        for key in ("mb", "rec_s_b64", "rec_s_b1")
    }
    drops = [f["accuracy"] - q["accuracy"] for q, f in zip(rows["int8"], rows["fp32"], strict=True)]
    print(
        f"int8 / fp32: size x{ratio['mb']:.3f}, records/s x{ratio['rec_s_b64']:.3f} at batch 64, "
        f"x{ratio['rec_s_b1']:.3f} at batch 1; accuracy change median {-statistics.median(drops):+.2f} points, "
        f"worst {-max(drops):+.2f}"
    )


if __name__ == "__main__":
    main()
