"""Real-world JSON Schemas: how many the constrained decoder compiles, beside llguidance, and what refuses the rest.

    pip install -e ".[bench]"        # check-jsonschema (the corpus) and llguidance (the peer), optional
    python benchmarks/schema_corpus.py [--schemas DIR] [--generate N --budgets 256 1024]

The corpus is the set of public CI / config schemas that ship inside the ``check-jsonschema`` package (GitHub
workflows and actions, GitLab CI, CircleCI, Azure Pipelines, Renovate, Dependabot, compose-spec, ...: its
``builtin_schemas``), read as files, so the figure names a package and version anyone can install; ``--schemas DIR``
takes every ``*.json`` of a folder instead. Each schema is compiled as shipped (its root ``$schema`` declares its
draft) by ``omnifuse.schema.compile_schema`` with ``format`` asserted (the default) and as an annotation (the
drafts' default), and by llguidance (``LLMatcher.grammar_from_json_schema`` + ``validate_grammar_with_warnings``:
compiled = no error). Prints one row per schema (size, compile time, the keyword that refused it) and the totals.

``--generate N``: for every schema omnifuse compiles (format as annotation), N documents sampled from random logits
(seeded) over the byte vocabulary under each token budget of ``--budgets``, through the same
``JsonSchemaLogitsProcessor`` the model's decoder uses; each is checked by the schema's own draft validator
(``jsonschema``, with ``pattern`` run by ``regress``, an ECMA-262 engine, as the schemas intend) and counted: valid,
and closed by an EOS before the budget ran out (the others are closed by the budget itself: the mask steers the
document so that it is complete at the last token). A measured table, never pass/fail.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections import Counter
from importlib import metadata
from pathlib import Path


def corpus(folder: str | None) -> tuple[str, list[Path]]:
    """(where the corpus comes from, its schema files)."""
    if folder:
        return folder, sorted(Path(folder).glob("*.json"))
    spec = importlib.util.find_spec("check_jsonschema")  # located, not imported (its CLI pulls in click, requests)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the corpus needs check-jsonschema: pip install -e '.[bench]' (or pass --schemas DIR)")
    root = Path(next(iter(spec.submodule_search_locations))) / "builtin_schemas"
    files = sorted((root / "vendor").glob("*.json")) + sorted((root / "custom").glob("*.json"))
    return f"check-jsonschema {metadata.version('check-jsonschema')} builtin_schemas", files


def omnifuse_compile(schema, formats: str) -> tuple[str | None, float]:
    """(None if compiled, else the refused keyword and its path; seconds)."""
    from omnifuse.schema import CompiledSchema, SchemaError, UnsupportedSchemaError

    start = time.perf_counter()
    try:
        CompiledSchema(schema, formats)  # not compile_schema: no cache between the two modes
        refused = None
    except UnsupportedSchemaError as e:
        refused = f"{e.keyword} at {e.path}"
    except SchemaError as e:
        refused = f"schema error: {e}"
    except RecursionError:
        refused = "recursion limit"
    return refused, time.perf_counter() - start


def llguidance_compile(schema) -> tuple[str | None, float] | None:
    """(None if compiled, else its first message; seconds), or None without llguidance."""
    try:
        from llguidance import LLMatcher
    except ImportError:
        return None
    start = time.perf_counter()
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
        refused = (messages[0] if messages else "error") if is_error else None
    except Exception as e:  # noqa: BLE001 - the peer's own exception types; any of them is a refusal
        refused = str(e).splitlines()[0]
    return refused, time.perf_counter() - start


def ecma_validator(schema):
    """The schema's draft validator (``jsonschema``), with ``pattern`` / ``patternProperties`` matched by regress
    (ECMA-262, ``u`` flag) where it is installed: Python's ``re`` cannot read ``\\p{..}`` (CircleCI)."""
    import jsonschema
    from jsonschema import validators

    base = validators.validator_for(schema)
    try:
        import regress
    except ImportError:
        return base(schema)
    cache: dict[str, object] = {}

    def search(pattern: str, text: str) -> bool:
        if pattern not in cache:
            cache[pattern] = regress.Regex(pattern, "u")
        return cache[pattern].find(text) is not None

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string") and not search(patrn, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")

    def pattern_properties(validator, patterns, instance, schema):
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in patterns.items():
            for k, v in instance.items():
                if search(patrn, k):
                    yield from validator.descend(v, subschema, path=k, schema_path=patrn)

    return validators.extend(base, {"pattern": pattern, "patternProperties": pattern_properties})(schema)


def sample_documents(schema, n: int, budget: int, seed: int) -> list[tuple[bytes, bool]]:
    """``n`` documents from random logits under ``schema`` (format as annotation) within ``budget`` tokens:
    ``(bytes, ended with EOS)``."""
    import torch

    from omnifuse.data.tokenizer import ByteTokenizer
    from omnifuse.schema import JsonSchemaLogitsProcessor

    tok = ByteTokenizer()
    g = torch.Generator().manual_seed(seed)
    proc = JsonSchemaLogitsProcessor(
        [schema] * n, tok.token_bytes, tok.vocab_size, tok.eos_id, budget, prompt_len=1, pad_id=tok.pad_id,
        formats="annotation",
    )  # fmt: skip
    seqs = torch.full((n, 1), tok.bos_id)
    done = torch.zeros(n, dtype=torch.bool)
    for _ in range(budget):
        masked = proc(seqs, torch.randn(n, tok.vocab_size, generator=g) * 2.0)
        gumbel = -torch.log(-torch.log(torch.rand(n, tok.vocab_size, generator=g).clamp_min(1e-20)))
        nxt = torch.where(done, torch.full((n,), tok.pad_id), (masked + gumbel).argmax(-1))
        done |= nxt == tok.eos_id
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        if done.all():
            break
    out = []
    for row, ended in zip(seqs[:, 1:].tolist(), done.tolist()):
        data = bytearray()
        for t in row:
            if t in (tok.eos_id, tok.pad_id):
                break
            data += tok.token_bytes(t)
        out.append((bytes(data), ended))
    return out


_BAD = object()


def parse(data: bytes):
    """The JSON value of ``data``, or ``_BAD`` where it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return _BAD


def generation_table(files: list[Path], n: int, budgets: list[int]) -> None:
    from omnifuse.schema import CompiledSchema, SchemaError

    print(f"\nrandom-logit generation, {n} documents per schema and budget (format as annotation):")
    print(f"{'schema':38s} {'budget':>6s} {'shortest':>8s} {'EOS':>6s} {'valid':>6s} {'mean B':>7s} {'s':>6s}")
    total = Counter()
    for path in files:
        schema = json.loads(path.read_text(encoding="utf-8"))
        try:
            shortest = CompiledSchema(schema, "annotation").min_chars
        except SchemaError:
            continue
        validator = ecma_validator(schema)
        for budget in budgets:
            if shortest is None or shortest > budget:
                print(f"{path.stem[:38]:38s} {budget:6d} {shortest!s:>8s}  (no document fits)")
                continue
            start = time.perf_counter()
            docs = sample_documents(schema, n, budget, seed=budget)
            seconds = time.perf_counter() - start
            ended = sum(e for _, e in docs)
            valid = sum(validator.is_valid(parsed) for parsed in map(parse, (d for d, _ in docs)) if parsed is not _BAD)
            total["docs"] += n
            total["ended"] += ended
            total["valid"] += valid
            mean = statistics.mean(len(d) for d, _ in docs)
            print(f"{path.stem[:38]:38s} {budget:6d} {shortest:8d} {ended:6d} {valid:6d} {mean:7.1f} {seconds:6.1f}")
    print(f"\n{total['valid']} / {total['docs']} valid, {total['ended']} / {total['docs']} closed by an EOS before the budget ran out")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", help="a folder of *.json schemas instead of check-jsonschema's")
    parser.add_argument("--generate", type=int, default=0, help="documents to sample per schema and budget")
    parser.add_argument("--budgets", type=int, nargs="+", default=[256, 1024], help="token budgets for --generate")
    args = parser.parse_args(argv)
    source, files = corpus(args.schemas)
    has_peer = llguidance_compile(True) is not None
    peer = f"llguidance {metadata.version('llguidance')}" if has_peer else "llguidance (not installed)"
    print(f"corpus: {source}, {len(files)} schemas; peer: {peer}\n")
    print(
        f"{'schema':38s} {'KB':>6s} {'assert':>7s} {'annot.':>7s} {'ms':>8s} {'llg':>5s}  refused by (omnifuse, annotation)"
    )
    totals: Counter = Counter()
    refusals: Counter = Counter()
    times: list[float] = []
    for path in files:
        schema = json.loads(path.read_text(encoding="utf-8"))
        asserted, _ = omnifuse_compile(schema, "assert")
        annotated, seconds = omnifuse_compile(schema, "annotation")
        times.append(seconds)
        peer_result = llguidance_compile(schema) if has_peer else None
        totals["assert"] += asserted is None
        totals["annotation"] += annotated is None
        if peer_result is not None:
            totals["llguidance"] += peer_result[0] is None
        if annotated is not None:
            refusals[annotated.split(" at ")[0]] += 1
        mark = {None: "yes"}
        print(
            f"{path.stem[:38]:38s} {path.stat().st_size / 1024:6.1f} {mark.get(asserted, 'no'):>7s} "
            f"{mark.get(annotated, 'no'):>7s} {1e3 * seconds:8.1f} "
            f"{(mark.get(peer_result[0], 'no') if peer_result else '-'):>5s}  {annotated or ''}"
        )
    n = len(files)
    print(
        f"\ncompiled as shipped: omnifuse {totals['assert']} / {n} (format asserted), {totals['annotation']} / {n} "
        f"(format as annotation)" + (f"; llguidance {totals['llguidance']} / {n}" if has_peer else "")
    )
    print(f"omnifuse refusals by keyword (annotation mode): {dict(refusals.most_common())}")
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"omnifuse compile time (annotation mode, refused ones included): median {1e3 * statistics.median(times):.1f} ms, "
          f"p99 {1e3 * p99:.1f} ms, max {1e3 * max(times):.1f} ms")  # fmt: skip
    if args.generate:
        generation_table(files, args.generate, args.budgets)


if __name__ == "__main__":
    main()
