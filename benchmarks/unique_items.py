"""Cost of ``uniqueItems`` over objects: the mask and the shortest-completion cost asked at every character of an
array of N distinct records, with ``uniqueItems`` and without, side by side.

    python benchmarks/unique_items.py [--items 20 80 200] [--one-name 60] [--enum 64] [--seed 0]

The records are ``{"name": <one of 28 names>, "value": <0..12>}`` drawn with a fixed seed, repeats dropped; with
``--one-name N``, N records ``{"name": "x", "value": i}``; with ``--enum N`` the items are an enum of N records
``{"name": "n<i>", "value": i}``, every member written. For each
character the recogniser's ``allowed_bytes()`` and ``min_chars_to_complete`` are read (what the logits processor
asks), then the character is fed. Prints milliseconds per character (mean and the worst character) and the ratio
against the same document under the schema without ``uniqueItems``. A measured table, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from omnifuse.schema import compile_schema

RECORD = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "value": {"type": "integer"}},
    "required": ["name", "value"],
    "additionalProperties": False,
}


def document(n: int, seed: int) -> str:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        record = {"name": rng.choice(["alpha", "beta", "gamma", "delta"]) + str(i % 7), "value": i % 13}
        if record not in records:
            records.append(record)
    return json.dumps(records)


def timed_feed(schema: dict, text: str) -> tuple[float, float]:
    """(mean, worst) seconds per character of mask + cost + feed."""
    rec = compile_schema(schema).recogniser()
    worst = 0.0
    start = time.perf_counter()
    for ch in text:
        t = time.perf_counter()
        rec.allowed_bytes()
        _ = rec.min_chars_to_complete
        worst = max(worst, time.perf_counter() - t)
        if not rec.feed(ch):
            raise SystemExit(f"refused at {len(text)} chars: the benchmark's document must be valid")
    if not rec.accepting:
        raise SystemExit("the document was not accepted")
    return (time.perf_counter() - start) / len(text), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[20, 80, 200])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--one-name", type=int, nargs="*", default=[60],
        help="also: this many records that all have the same name (values 0, 1, ...): every earlier item stays a "
        "possible repeat up to the value, the search's worst case (none: skip)",
    )  # fmt: skip
    parser.add_argument(
        "--enum", type=int, nargs="*", default=[64],
        help="also: items from an enum of this many records, every one written (none: skip)",
    )  # fmt: skip
    args = parser.parse_args()
    print(
        f"{'items':>18} {'records':>8} {'chars':>6} {'unique ms/char':>15} {'worst ms':>9} {'plain ms/char':>14}"
        f" {'ratio':>6}"
    )
    cases = [("open record", RECORD, document(n, args.seed)) for n in args.items]
    for n in args.one_name:
        cases.append(("one name", RECORD, json.dumps([{"name": "x", "value": i} for i in range(n)])))
    for n in args.enum:  # an enum of records: each member a node the array drops once written
        values = [{"name": f"n{i}", "value": i} for i in range(n)]
        cases.append((f"enum of {n}", {"enum": values}, json.dumps(values)))
    for label, items, text in cases:
        mean_u, worst_u = timed_feed({"type": "array", "uniqueItems": True, "items": items}, text)
        mean_p, _ = timed_feed({"type": "array", "items": items}, text)
        records = len(json.loads(text))
        print(
            f"{label:>18} {records:>8} {len(text):>6} {1000 * mean_u:>15.2f} {1000 * worst_u:>9.1f}"
            f" {1000 * mean_p:>14.3f} {mean_u / mean_p:>5.1f}x"
        )


if __name__ == "__main__":
    main()
