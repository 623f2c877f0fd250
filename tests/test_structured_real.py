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

from omnifuse.schema import compile_schema

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
