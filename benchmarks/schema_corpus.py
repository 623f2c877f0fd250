"""Real-world JSON Schemas: how many the constrained decoder compiles, beside llguidance, and what refuses the rest.

    pip install -e ".[bench]"        # check-jsonschema (the corpus) and llguidance (the peer), optional
    python benchmarks/schema_corpus.py [--schemas DIR]

The corpus is the set of public CI / config schemas that ship inside the ``check-jsonschema`` package (GitHub
workflows and actions, GitLab CI, CircleCI, Azure Pipelines, Renovate, Dependabot, compose-spec, ...: its
``builtin_schemas``), read as files, so the figure names a package and version anyone can install; ``--schemas DIR``
takes every ``*.json`` of a folder instead. Each schema is compiled as shipped (its root ``$schema`` declares its
draft) by ``omnifuse.schema.compile_schema`` with ``format`` asserted (the default) and as an annotation (the
drafts' default), and by llguidance (``LLMatcher.grammar_from_json_schema`` + ``validate_grammar_with_warnings``:
compiled = no error). Prints one row per schema (size, compile time, the keyword that refused it) and the totals.
A measured table, never pass/fail.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", help="a folder of *.json schemas instead of check-jsonschema's")
    args = parser.parse_args(argv)
    source, files = corpus(args.schemas)
    has_peer = llguidance_compile(True) is not None
    peer = f"llguidance {metadata.version('llguidance')}" if has_peer else "llguidance (not installed)"
    print(f"corpus: {source}, {len(files)} schemas; peer: {peer}\n")
    print(f"{'schema':38s} {'KB':>6s} {'assert':>7s} {'annot.':>7s} {'ms':>8s} {'llg':>5s}  refused by (omnifuse, annotation)")
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


if __name__ == "__main__":
    main()
