"""Adaptive routing (``decoder.top_p``) against fixed top-k on trained checkpoints: experts per token, MoE-layer time,
accuracy.

    python benchmarks/adaptive_routing.py --ckpts runs/recipe_2500/seed_{0,1,2}/version_0/checkpoints/best.ckpt \\
        [--top-p 0.15 0.2 0.25 0.3] [--max-drop 0.3]

Each checkpoint is rebuilt from its own config with ``decoder.top_p`` set (what ``omnifuse predict ...
--model.init_args.decoder.top_p P`` does) and run by the batch job (``Predictor``, batch 64, greedy, 12 new tokens):

1. on the validation split, fixed top-k and every ``--top-p``: accuracy, routed experts per generated token (from each
   prediction's ``token_experts``), overall and per answer type;
2. ``p`` is chosen on validation alone: the setting with the fewest experts per token whose validation accuracy is
   within ``--max-drop`` points of fixed top-k on every checkpoint;
3. on the test split, fixed top-k and the chosen ``p``: the same figures, plus the time spent inside the MoE layers
   (forward hooks, summed over the pass) and the records/s of the whole pass, the two settings timed alternately.

Trained with adaptive routing (``--model.init_args.decoder.top_p P --model.init_args.decoder.experts_loss_coef C``):

    python benchmarks/adaptive_routing.py --ckpts runs/adaptive_p03/seed_{0,1,2}/version_0/checkpoints/best.ckpt \
        --baseline runs/recipe_evalshare/seed_{0,1,2}/version_0/checkpoints/best.ckpt

runs each checkpoint with the routing it was trained with against the fixed top-k checkpoint of the same seed (steps
1 and 3, nothing chosen: ``p`` and the penalty were fixed before training).

Prints one table with the median and worst over the checkpoints. A measured figure, never pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

ANSWER_TYPES = ("yes/no", "color", "shape")  # easy-VQA's meta.answer_type


OWN = "own"  # build(ckpt, OWN): the routing the checkpoint was trained with


def build(ckpt: Path, top_p: float | None | str = None, **decoder):
    """The checkpoint's model with ``decoder.top_p`` replaced (None: fixed top-k; ``OWN``: the checkpoint's own
    setting) and any other decoder settings given (e.g. ``exit_threshold``)."""
    from omnifuse.finetune.safe_load import load_checkpoint
    from omnifuse.tasks.model import OmniModel

    checkpoint = load_checkpoint(ckpt)
    config = dict(checkpoint["omnifuse_model_config"])
    routing = {} if top_p == OWN else {"top_p": top_p, "min_experts": 1}
    config["decoder"] = {**config["decoder"], **routing, **decoder}
    model = OmniModel.from_config(config)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model


class MoETimer:
    """Wall time spent inside the model's MoE layers (CPU: every op is synchronous, so the hooks time the work)."""

    def __init__(self, model) -> None:
        self.seconds = 0.0
        self._start: dict[int, float] = {}
        self.handles = []
        for layer in model.decoder.moe_layers:
            self.handles.append(layer.register_forward_pre_hook(self._pre))
            self.handles.append(layer.register_forward_hook(self._post))

    def _pre(self, module, args) -> None:
        self._start[id(module)] = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self.seconds += time.perf_counter() - self._start.pop(id(module))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def evaluate(
    model, manifest: Path, timed: bool = False, limit: int | None = None, task: str = "vqa", batch_size: int = 64
) -> dict:
    """Accuracy and routed experts per generated token (overall, per answer type, as a histogram) of one pass, its
    wall time and the time spent in the decoder's decoding steps (``decode_s``).

    ``task="caption"``: greedy captions of up to 64 bytes, and ``accuracy`` is BLEU-4 in points (x100) with
    ``cider_d`` beside it (no answer types)."""
    from omnifuse.app.predictor import Predictor
    from omnifuse.app.score import score_records
    from omnifuse.data.records import read_manifest
    from omnifuse.tasks.config import GenerationConfig

    records = [r for r in read_manifest(manifest) if not isinstance(r, Exception)][:limit]
    inputs = [{"id": r.id, "task": r.task, "image": str(r.image), "text": r.text} for r in records]
    max_new = 12 if task == "vqa" else 64  # the longest caption reference is 74 bytes, the longest target 52
    predictor = Predictor(
        model, generation=GenerationConfig(max_new_tokens=max_new), batch_size=batch_size, image_size=64
    )
    timer = MoETimer(predictor.model) if timed else None
    decoder = predictor.model.decoder
    decode = {"s": 0.0}

    def timed_step(*args, _step=decoder.step, **kwargs):  # the decoding steps alone (encoders and loop left out)
        t = time.perf_counter()
        out = _step(*args, **kwargs)
        decode["s"] += time.perf_counter() - t
        return out

    decoder.step = timed_step
    start = time.perf_counter()
    try:
        out = predictor.predict(inputs)
    finally:
        del decoder.step  # the class's method again
    wall = time.perf_counter() - start
    if timer is not None:
        timer.remove()
    rows = {row["id"]: row for row in out["predictions"]}
    kinds = {r.id: r.meta.get("answer_type", "other") for r in records}
    result: dict = {"errors": len(out["errors"]), "wall_s": wall, "moe_s": timer.seconds if timer else None}
    result["decode_s"] = decode["s"]
    if task == "caption":
        scores = score_records(
            "caption", [r for r in records if r.id in rows], {i: rows[i]["prediction"] for i in rows}
        )
        result["accuracy"], result["cider_d"] = 100 * scores["bleu4"], scores["cider_d"]
        kinds = {r.id: "all" for r in records}
        return _depth(result, rows, kinds)
    result["accuracy"] = (
        100
        * score_records("vqa", [r for r in records if r.id in rows], {i: rows[i]["prediction"] for i in rows})[
            "vqa_accuracy"
        ]
    )
    for kind in ANSWER_TYPES:
        subset = [r for r in records if r.id in rows and kinds[r.id] == kind]
        if subset:
            preds = {r.id: rows[r.id]["prediction"] for r in subset}
            result[f"accuracy/{kind}"] = 100 * score_records("vqa", subset, preds)["vqa_accuracy"]
    return _depth(result, rows, kinds)


def _depth(result: dict, rows: dict, kinds: dict) -> dict:
    """``result`` with the routed experts and MoE layers each generated token used (overall and per kind)."""
    per_kind: dict[str, list[int]] = defaultdict(list)  # routed experts of each (generated token, MoE layer)
    depth: dict[str, list[int]] = defaultdict(list)  # MoE layers each generated token ran (early exit skips some)
    for rid, row in rows.items():
        for token in row.get("token_experts", []):
            for experts in token["experts"]:
                per_kind[kinds[rid]].append(len(experts))
                per_kind["all"].append(len(experts))
            used = sum(1 for experts in token["experts"] if experts)
            depth[kinds[rid]].append(used)
            depth["all"].append(used)
    for kind, counts in per_kind.items():
        result[f"experts/{kind}"] = statistics.fmean(counts)
    for kind, counts in depth.items():
        result[f"layers/{kind}"] = statistics.fmean(counts)
    result["histogram"] = dict(sorted(Counter(per_kind["all"]).items()))
    result["tokens"] = len(depth["all"])  # generated tokens (eos included)
    return result


def choose_on_validation(val: dict, candidates: list, cost: str, max_drop: float):
    """The candidate setting with the lowest median ``cost`` (e.g. experts per token) among those whose validation
    accuracy is within ``max_drop`` points of the baseline (key None) on every checkpoint; None if there is none."""
    n = len(val[None])
    fine = [
        c for c in candidates if all(val[c][i]["accuracy"] >= val[None][i]["accuracy"] - max_drop for i in range(n))
    ]
    return min(fine, key=lambda c: statistics.median(r[cost] for r in val[c])) if fine else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpts", nargs="+", required=True, help="one trained checkpoint per seed")
    parser.add_argument("--top-p", type=float, nargs="+", default=[0.15, 0.2, 0.25, 0.3])
    parser.add_argument("--max-drop", type=float, default=0.3, help="validation points a p may lose against top-k")
    parser.add_argument("--val", default="datasets/easyvqa/vqa_val.jsonl")
    parser.add_argument("--test", default="datasets/easyvqa/vqa_test.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="the first N records of each split (a quick look)")
    parser.add_argument(
        "--baseline",
        nargs="+",
        help="fixed top-k checkpoints, one per --ckpts entry (same seed): --ckpts were then trained with adaptive "
        "routing and are run with their own top_p against these (no p is chosen here)",
    )
    args = parser.parse_args(argv)
    if args.baseline and len(args.baseline) != len(args.ckpts):
        parser.error("--baseline needs one checkpoint per --ckpts entry")
    settings: list = [None, *args.top_p]
    label = {p: ("top-k" if p is None else f"top_p {p:g}") for p in settings}

    val: dict = defaultdict(list)
    if args.baseline:
        own = build(Path(args.ckpts[0]), OWN).decoder_config
        chosen = OWN
        label[OWN] = f"trained top_p {own.top_p:g}, experts loss {own.experts_loss_coef:g}"
        for n, (base, ckpt) in enumerate(zip(args.baseline, args.ckpts, strict=True)):
            for p, path in ((None, base), (OWN, ckpt)):
                val[p].append(evaluate(build(Path(path), p), Path(args.val), limit=args.limit))
                r = val[p][-1]
                print(
                    f"pair {n} val {label[p]} acc {r['accuracy']:.2f} experts/token {r['experts/all']:.3f}", flush=True
                )
    else:
        for n, ckpt in enumerate(args.ckpts):
            for p in settings:
                val[p].append(evaluate(build(Path(ckpt), p), Path(args.val), limit=args.limit))
                r = val[p][-1]
                print(
                    f"checkpoint {n} val {label[p]:12s} acc {r['accuracy']:.2f} experts/token {r['experts/all']:.3f} {r['histogram']}",
                    flush=True,
                )
        chosen = choose_on_validation(val, args.top_p, "experts/all", args.max_drop)
        print(f"chosen on validation: {label[chosen] if chosen is not None else 'none within the limit'}", flush=True)

    test: dict = defaultdict(list)
    for n, ckpt in enumerate(args.ckpts):
        if args.baseline:
            models = {None: build(Path(args.baseline[n]), None), OWN: build(Path(ckpt), OWN)}
        else:
            models = {p: build(Path(ckpt), p) for p in dict.fromkeys([None, chosen])}
        for model in models.values():  # warm-up (decoded images cached, kernels loaded)
            evaluate(model, Path(args.val), limit=args.limit)
        order = list(models) if n % 2 == 0 else list(reversed(models))  # alternate which setting runs first
        for p in order:
            test[p].append(evaluate(models[p], Path(args.test), timed=True, limit=args.limit))
            r = test[p][-1]
            print(
                f"checkpoint {n} test {label[p]:12s} acc {r['accuracy']:.2f} experts/token {r['experts/all']:.3f} MoE {r['moe_s']:.2f} s wall {r['wall_s']:.2f} s",
                flush=True,
            )

    def med_worst(rows: list[dict], key: str, worst=min) -> str:
        values = [r[key] for r in rows if r.get(key) is not None]
        return f"{statistics.median(values):7.2f} / {worst(values):6.2f}" if values else "-"

    chosen_on = "p fixed before training" if args.baseline else f"p chosen on {args.val}"
    print(f"\nadaptive routing, {len(args.ckpts)} checkpoints (median / worst); {chosen_on}")
    print(f"{'split':5s} {'setting':12s} {'accuracy %':>16s} " + " ".join(f"{'acc ' + k:>16s}" for k in ANSWER_TYPES)
          + f" {'experts/token':>16s} " + " ".join(f"{'experts ' + k:>13s}" for k in ANSWER_TYPES))  # fmt: skip
    for split, table in (("val", val), ("test", test)):
        for p, rows in table.items():
            print(
                f"{split:5s} {label[p]:12s} {med_worst(rows, 'accuracy')} "
                + " ".join(med_worst(rows, f"accuracy/{k}") for k in ANSWER_TYPES)
                + f" {med_worst(rows, 'experts/all', max)} "
                + " ".join(f"{statistics.median(r[f'experts/{k}'] for r in rows):13.3f}" for k in ANSWER_TYPES if all(f'experts/{k}' in r for r in rows))
            )  # fmt: skip
    if chosen is not None:
        base, adaptive = test[None], test[chosen]
        moe = [a["moe_s"] / b["moe_s"] for a, b in zip(adaptive, base, strict=True)]
        wall = [b["wall_s"] / a["wall_s"] for a, b in zip(adaptive, base, strict=True)]
        cut = [1 - a["experts/all"] / b["experts/all"] for a, b in zip(adaptive, base, strict=True)]
        print(
            f"\ntest, {label[chosen]} against top-k: routed expert evaluations -{100 * statistics.median(cut):.1f} % "
            f"(worst -{100 * min(cut):.1f} %), MoE-layer time x{statistics.median(moe):.3f} (median), "
            f"records/s x{statistics.median(wall):.3f}; MoE seconds top-k / adaptive: "
            + ", ".join(f"{b['moe_s']:.2f} / {a['moe_s']:.2f}" for a, b in zip(adaptive, base, strict=True))
        )


if __name__ == "__main__":
    main()
