"""A real-world schema end to end: GitHub workflow files (SchemaStore's 116 KB draft-07 schema, vendored unchanged
under tests/schemas/real/ with its licence). It needs patternProperties (job ids), oneOf over closed objects (steps)
and draft-07 rewriting at once.

* it compiles as shipped, in both ``format`` modes;
* random-logit generation always ends, within the token budget, in a document the reference validator of the
  schema's own draft accepts: at generous budgets, with a whitespace-loving policy, and at the shortest possible one;
* hand-written workflows get the validator's verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from omnifuse.schema import UnsupportedSchemaError, compile_schema

from .test_structured_generate import _single_thread, generate  # noqa: F401  (autouse fixture)

WORKFLOWS = json.loads((Path(__file__).parent / "schemas" / "real" / "github-workflows.json").read_text())
VALIDATOR = jsonschema.validators.validator_for(WORKFLOWS)(WORKFLOWS)

WORKFLOW_TEXTS = [
    '{"on": "push", "jobs": {"build": {"runs-on": "ubuntu-latest", "steps": [{"run": "make"}]}}}',
    '{"on": ["push", "pull_request"], "jobs": {"t": {"runs-on": "x", "steps": [{"uses": "actions/checkout@v4"}]}}}',
    '{"on": "push", "jobs": {}}',  # no job: minProperties 1
    '{"on": "push", "jobs": {"9bad": {"runs-on": "x", "steps": [{"run": "a"}]}}}',  # a job id must not start with 9
    '{"on": "push", "jobs": {"b": {"runs-on": "x", "steps": [{"run": "a", "uses": "b"}]}}}',  # run and uses: oneOf
    '{"on": "push", "jobs": {"b": {"runs-on": "x", "steps": [{"run": "a", "shell": "bash"}]}}}',
    '{"on": "push", "jobs": {"b": {"runs-on": "x", "steps": [{"uses": "a", "shell": "bash"}]}}}',  # shell needs run
    '{"on": "push", "jobs": {"b": {"uses": "./.github/workflows/w.yml"}}}',  # a reusable-workflow call
    '{"on": "push", "jobs": {"b": {"runs-on": "x", "steps": [{"run": "a"}]}}, "unknown": 1}',
]


@pytest.mark.parametrize("formats", ["assert", "annotation"])
def test_compiles_as_shipped(formats: str) -> None:
    compiled = compile_schema(WORKFLOWS, formats=formats)
    assert compiled.satisfiable


def test_verdicts_match_reference_validator() -> None:
    compiled = compile_schema(WORKFLOWS, formats="annotation")
    verdicts = set()
    for text in WORKFLOW_TEXTS:
        expected = VALIDATOR.is_valid(json.loads(text))
        verdicts.add(expected)
        assert compiled.accepts(text) == expected, text
        assert compiled.accepts(json.dumps(json.loads(text), indent=2)) == expected, text
    assert verdicts == {True, False}


@pytest.mark.parametrize(("seed", "max_new", "ws_bias"), [(0, 400, 0.0), (1, 200, 0.0), (2, 400, 8.0)])
def test_random_logit_generation_ends_valid_within_budget(seed: int, max_new: int, ws_bias: float) -> None:
    outs = generate([WORKFLOWS] * 4, seed=seed, max_new=max_new, ws_bias=ws_bias, formats="annotation")
    for data in outs:
        assert len(data) <= max_new
        VALIDATOR.validate(json.loads(data.decode("utf-8")))


def test_generation_at_the_shortest_budget() -> None:
    budget = compile_schema(WORKFLOWS, formats="annotation").min_chars
    (data,) = generate([WORKFLOWS], seed=5, max_new=budget, formats="annotation")
    assert len(data) == budget
    VALIDATOR.validate(json.loads(data.decode("utf-8")))


# Two more from the same package, each held by a complement the compiler builds from the schema's structure or as
# object state: Travis CI (a "possibly secret string" is a string or an object with "secure" alone, inside oneOfs whose
# branches overlap, so its complement "an object with some other name" is needed) and Bitbucket Pipelines (pipe
# variables: the complement of additionalProperties over open names; AWS credentials: "exactly one" of two overlapping
# branches, negated as "none or both").
REAL = {
    name: json.loads((Path(__file__).parent / "schemas" / "real" / f"{name}.json").read_text())
    for name in ("travis", "bitbucket-pipelines")
}


def _bitbucket(script: str, image: str = "") -> str:
    """A Bitbucket Pipelines document with one step running ``script`` (and an ``image`` object, if given)."""
    head = f'"image": {image}, ' if image else ""
    return '{%s"pipelines": {"default": [{"step": {"script": [%s]}}]}}' % (head, script)  # noqa: UP031


REAL_TEXTS = {
    "travis": [
        '{"language": "python", "notifications": {"webhooks": "https://example.com/hook"}}',
        '{"notifications": {"webhooks": {"secure": "c2VjcmV0"}}}',
        '{"notifications": {"webhooks": {"secure": "c2VjcmV0", "other": 1}}}',
        '{"notifications": {"webhooks": [{"secure": "a"}, "b"]}}',
        '{"notifications": {"webhooks": ["a", "a"]}}',
        '{"notifications": {"irc": {"channels": ["x"], "password": {"secure": "p"}}}}',
        '{"notifications": {"irc": {"channels": ["x"], "password": {"secure": 1}}}}',
        '{"notifications": {"flowdock": {"secure": "t", "x": "y"}}}',
        '{"addons": {"browserstack": {"access_key": {"secure": "k"}}}}',
    ],
    "bitbucket-pipelines": [
        _bitbucket('"make"'),
        _bitbucket('{"pipe": "atlassian/x:1.0", "variables": {"A": "b", "C": ["d"]}}'),
        _bitbucket('{"pipe": "atlassian/x:1.0", "variables": {"A": "b", "C": 1}}'),
        _bitbucket('{"pipe": "atlassian/x:1.0", "variables": {"C": [1]}}'),
        _bitbucket('"a"', '{"name": "x", "aws": {"access-key": "a", "secret-key": "b"}}'),
        _bitbucket('"a"', '{"name": "x", "aws": {"oidc-role": "r"}}'),
        _bitbucket('"a"', '{"name": "x", "aws": {"access-key": "a", "secret-key": "b", "oidc-role": "r"}}'),
        _bitbucket('"a"', '{"name": "x", "aws": {"access-key": "a"}}'),
    ],
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_more_real_schemas_compile_and_judge_as_their_validator(name: str) -> None:
    schema = REAL[name]
    validator = jsonschema.validators.validator_for(schema)(schema)
    if (
        name == "travis"
    ):  # its URLs are format "uri", which asserting mode refuses: it compiles with format as annotation
        with pytest.raises(UnsupportedSchemaError, match="'format'"):
            compile_schema(schema, formats="assert")
    else:
        assert compile_schema(schema, formats="assert").satisfiable
    compiled = compile_schema(schema, formats="annotation")
    verdicts = set()
    for text in REAL_TEXTS[name]:
        expected = validator.is_valid(json.loads(text))
        verdicts.add(expected)
        for spelled in (
            text,
            json.dumps(json.loads(text), indent=2),
            json.dumps(json.loads(text), separators=(",", ":")),
        ):
            assert compiled.accepts(spelled) == expected, spelled
    assert verdicts == {True, False}


@pytest.mark.parametrize("name", sorted(REAL))
def test_more_real_schemas_generate_valid_documents(name: str) -> None:
    schema = REAL[name]
    validator = jsonschema.validators.validator_for(schema)(schema)
    budget = compile_schema(schema, formats="annotation").min_chars
    for max_new, ws_bias, rows in ((300, 0.0, 4), (300, 8.0, 2), (budget, 0.0, 1)):
        for data in generate(
            [schema] * rows, seed=max_new + rows, max_new=max_new, ws_bias=ws_bias, formats="annotation"
        ):
            assert len(data) <= max_new
            validator.validate(json.loads(data.decode("utf-8")))
