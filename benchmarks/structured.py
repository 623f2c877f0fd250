"""Benchmark of JSON-Schema-constrained decoding: compile time and per-step mask time (prints figures only).

* schema compile time p50/p99 over every test group of the vendored JSON-Schema-Test-Suite (draft 2020-12),
  compiled from scratch (no cache), supported and refused schemas alike;
* per-step mask computation (``JsonSchemaLogitsProcessor.__call__``) for the easy-VQA scene schema and a larger
  nested schema (recursion, formats, patterns, numeric bounds, non-ASCII enums), at batch 1 and 16, driven by
  random logits over the byte tokenizer until every row finished or ``max_new_tokens`` ran out;
* the suite coverage (supported cases / all cases per keyword file).

Usage::

    python benchmarks/structured.py                    # all figures
    python benchmarks/structured.py --write-expected-unsupported   # refresh tests/json_schema_suite/...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from omnifuse.app import threads
from omnifuse.data.tokenizer import ByteTokenizer
from omnifuse.schema import JsonSchemaLogitsProcessor, UnsupportedSchemaError, compile_schema
from omnifuse.schema.compiled import CompiledSchema

SUITE = Path(__file__).resolve().parents[1] / "tests" / "json_schema_suite"

# The easy-VQA scene schema and a nested one (recursion, formats, patterns, numeric bounds, non-ASCII enums), shared
# with tests/test_structured_generate.py.
SCENE_SCHEMA = json.loads((SUITE.parent / "schemas" / "scene.json").read_text(encoding="utf-8"))
NESTED_SCHEMA = json.loads((SUITE.parent / "schemas" / "nested.json").read_text(encoding="utf-8"))


DRAFTS = ("draft4", "draft6", "draft7", "draft2019-09", "draft2020-12")


def suite_remotes() -> dict[str, object]:
    """The suite's remote documents by the URI its tests fetch them from (``http://localhost:1234/...``), handed to
    the compiler as ``resources`` (nothing is fetched)."""
    root = SUITE / "remotes"
    return {
        f"http://localhost:1234/{p.relative_to(root).as_posix()}": json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(root.rglob("*.json"))
    }


def _suite_groups(draft: str):
    """(file name, group) of one draft's vendored suite, each group's schema declaring that draft at its root (the
    suite files leave ``$schema`` out; a user's schema states it)."""
    from omnifuse.schema.drafts import DRAFT_URIS

    uri = {d: u for u, d in DRAFT_URIS.items()}[draft] + "#"
    for path in sorted((SUITE / draft).glob("*.json")):
        for group in json.loads(path.read_text(encoding="utf-8")):
            schema = group["schema"]
            if isinstance(schema, dict) and "$schema" not in schema:
                group = {**group, "schema": {"$schema": uri, **schema}}
            yield path.name, group


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def bench_compile() -> None:
    times, ok_times = [], []
    for _, group in _suite_groups("draft2020-12"):
        t = time.perf_counter()
        try:
            CompiledSchema(group["schema"], formats="annotation")
            ok = True
        except UnsupportedSchemaError:
            ok = False
        dt = (time.perf_counter() - t) * 1e3
        times.append(dt)
        if ok:
            ok_times.append(dt)
    print(
        f"compile time over {len(times)} suite schemas: p50 {_pct(times, 0.5):.3f} ms, p99 {_pct(times, 0.99):.3f} ms"
    )
    print(
        f"  supported only ({len(ok_times)}): p50 {_pct(ok_times, 0.5):.3f} ms, p99 {_pct(ok_times, 0.99):.3f} ms,"
        f" max {max(ok_times):.3f} ms"
    )
    for name, schema in (("scene", SCENE_SCHEMA), ("nested", NESTED_SCHEMA)):
        t = time.perf_counter()
        CompiledSchema(schema)
        print(f"  {name} schema: {(time.perf_counter() - t) * 1e3:.2f} ms")


def bench_masks(schema: dict, name: str, batch: int, max_new: int, repeats: int) -> None:
    tok = ByteTokenizer()
    per_step: list[float] = []
    per_step_cpu: list[float] = []
    first_steps: list[float] = []
    lengths: list[int] = []
    for rep in range(repeats):
        g = torch.Generator().manual_seed(rep)
        proc = JsonSchemaLogitsProcessor(
            [schema] * batch, tok.token_bytes, tok.vocab_size, tok.eos_id, max_new, prompt_len=1, pad_id=tok.pad_id
        )
        seqs = torch.full((batch, 1), tok.task_id("json"))
        finished = torch.zeros(batch, dtype=torch.bool)
        for step in range(max_new):
            logits = torch.randn(batch, tok.vocab_size, generator=g)
            t, c = time.perf_counter(), time.thread_time()
            masked = proc(seqs, logits)
            dt, dc = (time.perf_counter() - t) * 1e6, (time.thread_time() - c) * 1e6
            (first_steps if step == 0 else per_step).append(dt)
            if step:
                per_step_cpu.append(dc)
            nxt = torch.multinomial(torch.softmax(masked, -1), 1, generator=g).squeeze(1)
            nxt = torch.where(finished, torch.full_like(nxt, tok.pad_id), nxt)
            finished |= nxt == tok.eos_id
            seqs = torch.cat([seqs, nxt[:, None]], 1)
            if finished.all():
                break
        lengths.append(seqs.shape[1] - 1)
    mean = statistics.fmean(per_step)
    cpu = statistics.fmean(per_step_cpu)
    print(
        f"  {name:7s} batch {batch:2d}: wall mean {mean:7.1f} us  p50 {_pct(per_step, 0.5):7.1f}  p99"
        f" {_pct(per_step, 0.99):7.1f} | CPU mean {cpu:7.1f} us  p50 {_pct(per_step_cpu, 0.5):7.1f}  p99"
        f" {_pct(per_step_cpu, 0.99):7.1f} ({cpu / batch:5.1f} us/row; first step {statistics.fmean(first_steps):.0f}"
        f" us; {statistics.fmean(lengths):.0f} steps/run)"
    )


def _trained_decoder(ckpt: str, manifest: str, batch: int):
    """A trained model's decoder and the fused memory of the first ``batch`` records of ``manifest``."""
    from omnifuse.data.collate import Collator
    from omnifuse.data.dataset import ManifestDataset
    from omnifuse.tasks.model import OmniModel

    model = OmniModel.from_pretrained(ckpt).eval()
    data = ManifestDataset(manifest, mode="predict")
    records = Collator()([data[i] for i in range(batch)])
    with torch.no_grad():
        memory = model.encode(records)
    return model.decoder, memory.tokens, memory.mask


def bench_decoder(batch: int, max_new: int, repeats: int, ckpt: str | None = None, manifest: str = "") -> None:
    """Constrained / unconstrained generation with omnifuse's MoE decoder (CPU time per step, same step count): a
    small random one, or a trained checkpoint's decoder over the memory of real records (``ckpt``)."""
    from omnifuse.moe_core import MoEDecoder, MoEDecoderConfig

    tok = ByteTokenizer()
    torch.manual_seed(0)
    if ckpt:
        model, mem, mmask = _trained_decoder(ckpt, manifest, batch)
        label = f"trained decoder (d_model {model.config.d_model}, {model.config.n_layers} layers)"
    else:
        cfg = MoEDecoderConfig(d_model=64, n_layers=2, n_heads=4, d_ff_dense=128, n_routed_experts=4, d_expert=64)
        model = MoEDecoder(cfg).eval()
        mem = torch.randn(batch, 8, cfg.d_model)
        mmask = torch.ones(batch, 8, dtype=torch.bool)
        label = "small MoE decoder (d_model 64, 2 layers)"
    prompt = torch.full((batch, 1), tok.task_id("json"))

    class NoEos:  # unconstrained, but never stops early: the same number of steps as the constrained run
        def __call__(self, seqs, logits):
            return logits.index_fill(1, torch.tensor([tok.eos_id]), float("-inf"))

    def run(proc) -> tuple[float, int]:
        c = time.thread_time()
        out = model.generate(mem, mmask, prompt, max_new, tok.eos_id, strategy="sample", logits_processor=proc,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
        return time.thread_time() - c, out.tokens.shape[1]

    run(NoEos())
    ratios = []
    for schema, name in ((SCENE_SCHEMA, "scene"), (NESTED_SCHEMA, "nested")):
        for _ in range(repeats):
            tu, nu = run(NoEos())
            proc = JsonSchemaLogitsProcessor(
                [schema] * batch, tok.token_bytes, tok.vocab_size, tok.eos_id, max_new, prompt_len=1
            )
            tc, nc = run(proc)
            ratios.append((tc / nc) / (tu / nu))
        print(
            f"  {name:7s} batch {batch:2d}: constrained/unconstrained CPU time per step with a {label}:"
            f" {statistics.median(ratios[-repeats:]):.3f} (median of {repeats};"
            f" unconstrained {tu / nu * 1e3:.2f} ms/step)"
        )


def bench_unconstrained(batch: int, steps: int = 200) -> None:
    """Reference: the tensor work an unconstrained step would do anyway (sampling from the logits)."""
    tok = ByteTokenizer()
    g = torch.Generator().manual_seed(0)
    ts = []
    for _ in range(steps):
        logits = torch.randn(batch, tok.vocab_size, generator=g)
        t = time.perf_counter()
        torch.multinomial(torch.softmax(logits, -1), 1, generator=g)
        ts.append((time.perf_counter() - t) * 1e6)
    print(f"  (reference: softmax + multinomial alone, batch {batch:2d}: {statistics.fmean(ts):.1f} us per step)")


REMOTES = suite_remotes()


def suite_coverage(draft: str) -> tuple[dict, dict]:
    per_file: dict[str, list[int]] = {}
    unsupported: dict[str, dict[str, str]] = {}
    for name, group in _suite_groups(draft):
        counts = per_file.setdefault(name, [0, 0])
        counts[1] += len(group["tests"])
        try:
            compile_schema(group["schema"], formats="annotation", resources=REMOTES)
            counts[0] += len(group["tests"])
        except UnsupportedSchemaError as e:
            unsupported.setdefault(name, {})[group["description"]] = e.keyword
    return per_file, unsupported


def print_coverage() -> None:
    for draft in DRAFTS:
        per_file, unsupported = suite_coverage(draft)
        sup = sum(s for s, _ in per_file.values())
        tot = sum(t for _, t in per_file.values())
        refused = Counter(k for groups in unsupported.values() for k in groups.values())
        print(
            f"suite coverage {draft:13s}: {sup:5d} / {tot:5d} test cases supported ({100 * sup / tot:5.1f} %); "
            f"groups refused by keyword: {dict(refused.most_common())}"
        )
    for name, (s, t) in suite_coverage("draft2020-12")[0].items():
        print(f"  draft2020-12/{name:32s} {s:4d} / {t:4d}")


def write_expected_unsupported() -> None:
    summary, groups = {}, {}
    for draft in DRAFTS:
        per_file, unsupported = suite_coverage(draft)
        summary[draft] = {
            "supported_cases": sum(s for s, _ in per_file.values()),
            "total_cases": sum(t for _, t in per_file.values()),
        }
        groups[draft] = unsupported
    out = {
        "_comment": "Groups of the vendored suites (per draft) that the compiler refuses (fails closed), with the "
        "keyword named by UnsupportedSchemaError. Regenerate: python benchmarks/structured.py "
        "--write-expected-unsupported",
        "summary": summary,
        "groups": groups,
    }
    path = SUITE / "expected_unsupported.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}: {out['summary']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-expected-unsupported", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny tensors: 1)")
    parser.add_argument("--decoder", action="store_true", help="also time generation with a small MoE decoder")
    parser.add_argument("--ckpt", help="time generation with this trained model's decoder instead (implies --decoder)")
    parser.add_argument("--manifest", default="datasets/easyvqa/json_test.jsonl", help="records whose memory --ckpt uses")
    args = parser.parse_args(argv)
    if args.write_expected_unsupported:
        write_expected_unsupported()
        return
    args.threads = threads.configure(args.threads).intra_op
    print_coverage()
    bench_compile()
    print(f"mask time per decoding step (byte tokenizer, random logits, max_new_tokens={args.max_new_tokens}):")
    for name, schema in (("scene", SCENE_SCHEMA), ("nested", NESTED_SCHEMA)):
        for batch in (1, 16):
            bench_masks(schema, name, batch, args.max_new_tokens, args.repeats)
    for batch in (1, 16):
        bench_unconstrained(batch)
    if args.decoder or args.ckpt:
        print("generation ratio:")
        for batch in (1, 16) if args.ckpt else (16,):
            bench_decoder(batch, args.max_new_tokens, args.repeats, args.ckpt, args.manifest)


if __name__ == "__main__":
    main()
