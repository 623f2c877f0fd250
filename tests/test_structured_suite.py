"""JSON-Schema-Test-Suite (draft 2020-12, vendored under tests/json_schema_suite) against the schema recogniser.

For every test group either the compiler refuses the schema with ``UnsupportedSchemaError`` (and the group is
listed, with that keyword, in ``expected_unsupported.json``), or the recogniser accepts every valid instance and
rejects every invalid one, each written compactly, with spaces and indented. Every verdict is also checked
against the reference validator (``jsonschema``). The suite runs with ``formats="annotation"``, the draft's
default vocabulary (``format`` is an annotation); format *assertion* is tested on the optional format files.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from omnifuse.schema import UnsupportedSchemaError, compile_schema

SUITE = Path(__file__).parent / "json_schema_suite"
DRAFT = SUITE / "draft2020-12"
EXPECTED_UNSUPPORTED = json.loads((SUITE / "expected_unsupported.json").read_text())["groups"]
FORMAT_FILES = sorted((DRAFT / "optional" / "format").glob("*.json"))


def _groups():
    for path in sorted(DRAFT.glob("*.json")):
        for group in json.loads(path.read_text(encoding="utf-8")):
            yield pytest.param(path.name, group, id=f"{path.stem}:{group['description'][:60]}")


def serialisations(value) -> list[str]:
    """The instance written compactly, with spaces, and indented (non-ASCII escaped, as ``json.dumps`` does)."""
    return [
        json.dumps(value, separators=(",", ":"), ensure_ascii=False),
        json.dumps(value, ensure_ascii=False),
        json.dumps(value, indent=2),
    ]


@pytest.mark.parametrize(("filename", "group"), list(_groups()))
def test_suite_group(filename: str, group: dict) -> None:
    listed = EXPECTED_UNSUPPORTED.get(filename, {}).get(group["description"])
    try:
        compiled = compile_schema(group["schema"], formats="annotation")
    except UnsupportedSchemaError as e:
        assert listed is not None, f"unexpectedly unsupported: {e}"
        assert e.keyword == listed, f"refused for {e.keyword!r}, listed as {listed!r}"
        assert e.keyword in str(e) and e.path.startswith("#")
        return
    assert listed is None, f"now supported: remove {group['description']!r} from expected_unsupported.json"
    validator = jsonschema.Draft202012Validator(group["schema"])
    for test in group["tests"]:
        assert validator.is_valid(test["data"]) == test["valid"], "the reference validator disagrees with the suite"
        for text in serialisations(test["data"]):
            verdict = compiled.accepts(text)
            assert verdict == test["valid"], f"{test['description']}: {text!r} -> {verdict}"


def test_expected_unsupported_lists_only_existing_groups() -> None:
    existing = {}
    for path in DRAFT.glob("*.json"):
        existing[path.name] = {g["description"] for g in json.loads(path.read_text(encoding="utf-8"))}
    for filename, groups in EXPECTED_UNSUPPORTED.items():
        assert filename in existing
        assert set(groups) <= existing[filename]


def suite_summary() -> dict[str, tuple[int, int]]:
    """``{file: (supported test cases, all test cases)}`` - the numbers reported in the README."""
    out = {}
    for path in sorted(DRAFT.glob("*.json")):
        supported = total = 0
        for group in json.loads(path.read_text(encoding="utf-8")):
            total += len(group["tests"])
            try:
                compile_schema(group["schema"], formats="annotation")
            except UnsupportedSchemaError:
                continue
            supported += len(group["tests"])
        out[path.name] = (supported, total)
    return out


def test_summary_matches_listing() -> None:
    summary = suite_summary()
    expected = json.loads((SUITE / "expected_unsupported.json").read_text())["summary"]
    assert sum(s for s, _ in summary.values()) == expected["supported_cases"]
    assert sum(t for _, t in summary.values()) == expected["total_cases"]


@pytest.mark.parametrize("path", FORMAT_FILES, ids=[p.stem for p in FORMAT_FILES])
def test_format_assertion_is_sound(path: Path) -> None:
    """Asserted formats never accept an invalid string (they may reject rare valid forms, e.g. leap seconds)."""
    accepted_valid = 0
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for group in json.loads(path.read_text(encoding="utf-8")):
        compiled = compile_schema(group["schema"])  # formats="assert"
        for test in group["tests"]:
            verdict = compiled.accepts(json.dumps(test["data"]))
            if verdict:
                assert test["valid"], f"accepted an invalid {path.stem}: {test['data']!r}"
                validator = jsonschema.Draft202012Validator(group["schema"], format_checker=checker)
                assert validator.is_valid(test["data"])
                accepted_valid += 1
    assert accepted_valid > 0
