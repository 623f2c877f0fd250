"""JSON-Schema-Test-Suite (drafts 4, 6, 7, 2019-09 and 2020-12, vendored under tests/json_schema_suite) against the
schema recogniser.

For every test group either the compiler refuses the schema with ``UnsupportedSchemaError`` (and the group is
listed, with that keyword, in ``expected_unsupported.json``), or the recogniser accepts every valid instance and
rejects every invalid one, each written compactly, with spaces and indented. Every verdict is also checked
against the reference validator of the group's draft (``jsonschema``). An older draft's schema is compiled with its
root ``$schema`` declaring that draft, as a user's schema would (the suite files leave it out); the compiler rewrites
it to 2020-12 (``omnifuse.schema.drafts``). The suite runs with ``formats="annotation"``, the drafts' default
(``format`` is an annotation); format *assertion* is tested on the optional 2020-12 format files. The suite's remote
documents (``remotes/``, served at ``http://localhost:1234/`` in its own runner) are handed to the compiler as
``resources`` and to the reference validator as a ``referencing`` registry of the group's draft.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import referencing
import referencing.jsonschema

from omnifuse.schema import UnsupportedSchemaError, compile_schema
from omnifuse.schema.drafts import DRAFT_URIS

SUITE = Path(__file__).parent / "json_schema_suite"
DRAFT = SUITE / "draft2020-12"
DRAFT_NAMES = ("draft4", "draft6", "draft7", "draft2019-09", "draft2020-12")
VALIDATORS = {
    "draft4": jsonschema.Draft4Validator,
    "draft6": jsonschema.Draft6Validator,
    "draft7": jsonschema.Draft7Validator,
    "draft2019-09": jsonschema.Draft201909Validator,
    "draft2020-12": jsonschema.Draft202012Validator,
}
SPECIFICATIONS = {
    "draft4": referencing.jsonschema.DRAFT4,
    "draft6": referencing.jsonschema.DRAFT6,
    "draft7": referencing.jsonschema.DRAFT7,
    "draft2019-09": referencing.jsonschema.DRAFT201909,
    "draft2020-12": referencing.jsonschema.DRAFT202012,
}
REMOTES = {
    f"http://localhost:1234/{p.relative_to(SUITE / 'remotes').as_posix()}": json.loads(p.read_text(encoding="utf-8"))
    for p in sorted((SUITE / "remotes").rglob("*.json"))
}
EXPECTED = json.loads((SUITE / "expected_unsupported.json").read_text())
EXPECTED_UNSUPPORTED = EXPECTED["groups"]
FORMAT_FILES = sorted((DRAFT / "optional" / "format").glob("*.json"))
URI_OF = {draft: uri for uri, draft in DRAFT_URIS.items()}


def declared(schema, draft: str):
    """The group's schema with its draft declared at the root (as a user's schema would declare it)."""
    if isinstance(schema, dict) and "$schema" not in schema:
        return {"$schema": URI_OF[draft] + "#", **schema}
    return schema


def registry(draft: str) -> referencing.Registry:
    """The remote documents for the reference validator, read in ``draft`` unless they declare their own."""
    def spec(uri: str):  # a document in a draft's folder is of that draft; the shared ones are the test's
        folder = uri.removeprefix("http://localhost:1234/").split("/")[0]
        return SPECIFICATIONS.get(folder, SPECIFICATIONS[draft])

    return referencing.Registry().with_resources(
        (uri, referencing.Resource.from_contents(doc, default_specification=spec(uri))) for uri, doc in REMOTES.items()
    )


def _groups():
    for draft in DRAFT_NAMES:
        for path in sorted((SUITE / draft).glob("*.json")):
            for group in json.loads(path.read_text(encoding="utf-8")):
                yield pytest.param(draft, path.name, group, id=f"{draft}/{path.stem}:{group['description'][:60]}")


def serialisations(value) -> list[str]:
    """The instance written compactly, with spaces, and indented (non-ASCII escaped, as ``json.dumps`` does)."""
    return [
        json.dumps(value, separators=(",", ":"), ensure_ascii=False),
        json.dumps(value, ensure_ascii=False),
        json.dumps(value, indent=2),
    ]


@pytest.mark.parametrize(("draft", "filename", "group"), list(_groups()))
def test_suite_group(draft: str, filename: str, group: dict) -> None:
    listed = EXPECTED_UNSUPPORTED[draft].get(filename, {}).get(group["description"])
    schema = declared(group["schema"], draft)
    try:
        compiled = compile_schema(schema, formats="annotation", resources=REMOTES)
    except UnsupportedSchemaError as e:
        assert listed is not None, f"unexpectedly unsupported: {e}"
        assert e.keyword == listed, f"refused for {e.keyword!r}, listed as {listed!r}"
        assert e.keyword in str(e) and (e.path.startswith("#") or e.path.partition("#")[0] in REMOTES)
        return
    assert listed is None, f"now supported: remove {group['description']!r} from expected_unsupported.json"
    validator = VALIDATORS[draft](group["schema"], registry=registry(draft))
    for test in group["tests"]:
        assert validator.is_valid(test["data"]) == test["valid"], "the reference validator disagrees with the suite"
        for text in serialisations(test["data"]):
            verdict = compiled.accepts(text)
            assert verdict == test["valid"], f"{test['description']}: {text!r} -> {verdict}"


def test_expected_unsupported_lists_only_existing_groups() -> None:
    for draft in DRAFT_NAMES:
        existing = {}
        for path in (SUITE / draft).glob("*.json"):
            existing[path.name] = {g["description"] for g in json.loads(path.read_text(encoding="utf-8"))}
        for filename, groups in EXPECTED_UNSUPPORTED[draft].items():
            assert filename in existing
            assert set(groups) <= existing[filename]


def suite_summary(draft: str) -> dict[str, tuple[int, int]]:
    """``{file: (supported test cases, all test cases)}`` of one draft - the numbers reported in the README."""
    out = {}
    for path in sorted((SUITE / draft).glob("*.json")):
        supported = total = 0
        for group in json.loads(path.read_text(encoding="utf-8")):
            total += len(group["tests"])
            try:
                compile_schema(declared(group["schema"], draft), formats="annotation", resources=REMOTES)
            except UnsupportedSchemaError:
                continue
            supported += len(group["tests"])
        out[path.name] = (supported, total)
    return out


@pytest.mark.parametrize("draft", DRAFT_NAMES)
def test_summary_matches_listing(draft: str) -> None:
    summary = suite_summary(draft)
    expected = EXPECTED["summary"][draft]
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
