"""JSON structured-output metrics on hand-made cases whose answers are worked out by hand."""

import pytest

from omnifuse.tasks.metrics import bbox_iou, json_equal, json_scores


def requires_fields(instance, schema):
    """A tiny injected validator: the instance is an object holding every field the schema requires."""
    return isinstance(instance, dict) and all(k in instance for k in schema.get("required", []))


SCHEMA = {"type": "object", "required": ["bbox", "label"]}
PREDICTIONS = [
    '{"shape": "circle", "color": "red", "bbox": [0, 0, 10, 10]}',  # exact
    '{"shape": "square", "color": "green", "bbox": [5, 0, 15, 10]}',  # 1 of 3 fields; IoU 50 / 150
    '{"shape": "circle", "count": 2',  # does not parse
    '{"answer": 1}',  # parses; 1 is not true
    '{"bbox": [1, 1, 3, 3]}',  # parses, but lacks the required "label"
]
TARGETS = [
    {"shape": "circle", "color": "red", "bbox": [0, 0, 10, 10]},
    {"shape": "square", "color": "blue", "bbox": [0, 0, 10, 10]},
    {"shape": "circle", "count": 2},
    {"answer": True},
    {"bbox": [0, 0, 2, 2], "label": "dog"},
]
SCHEMAS = [None, None, None, None, SCHEMA]


def test_hand_cases_with_validator():
    out = json_scores(PREDICTIONS, TARGETS, SCHEMAS, validate=requires_fields)
    assert out["n"] == 5
    assert out["validity"] == pytest.approx(3 / 5)  # samples 1, 2, 4
    assert out["exact_match"] == pytest.approx(1 / 5)  # sample 1
    assert out["field_accuracy"] == pytest.approx((1 + 1 / 3 + 0 + 0 + 0) / 5)
    assert out["n_bbox"] == 3  # targets 1, 2, 5 have a bbox; 5 is invalid -> IoU 0
    assert out["bbox_iou"] == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_hand_cases_without_validator_ignore_schemas():
    out = json_scores(PREDICTIONS, TARGETS, SCHEMAS)
    assert out["validity"] == pytest.approx(4 / 5)
    assert out["exact_match"] == pytest.approx(1 / 5)
    # Sample 5 is valid now: its bbox differs and "label" is missing -> 0 of 2 fields.
    assert out["field_accuracy"] == pytest.approx((1 + 1 / 3) / 5)
    # Sample 5's boxes [1,1,3,3] vs [0,0,2,2]: intersection 1, union 4 + 4 - 1 = 7.
    assert out["bbox_iou"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 3)


def test_with_jsonschema_as_the_injected_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {"count": {"type": "integer", "minimum": 0}, "label": {"type": "string"}},
        "required": ["count", "label"],
        "additionalProperties": False,
    }
    preds = ['{"count": 3, "label": "cat"}', '{"count": -1, "label": "cat"}', '{"count": 3, "label": "cat", "x": 1}']
    targets = [{"count": 3, "label": "cat"}] * 3
    out = json_scores(
        preds, targets, [schema] * 3, validate=lambda x, s: jsonschema.Draft202012Validator(s).is_valid(x)
    )
    assert out["validity"] == pytest.approx(1 / 3)
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["field_accuracy"] == pytest.approx(1 / 3)
    assert out["bbox_iou"] is None and out["n_bbox"] == 0


def test_field_accuracy_details():
    out = json_scores(
        ['{"a": 1, "b": [1, 2], "extra": 0}', '"yes"', "[1, 2]", "{}", '{"a": {"x": 1.0}}'],
        [{"a": 1, "b": [2, 1]}, "yes", [1, 2, 3], {}, {"a": {"x": 1}}],
    )
    # 1/2 (list order matters, extra fields ignored), 1 (scalar = one field), 0, 1 (empty object), 1 (1.0 == 1).
    assert out["field_accuracy"] == pytest.approx((0.5 + 1 + 0 + 1 + 1) / 5)
    assert out["exact_match"] == pytest.approx(3 / 5)
    assert out["validity"] == 1.0


def test_strict_json_parsing():
    out = json_scores(["NaN", '{"a": Infinity}', "{'a': 1}", "", '{"a": 1} trailing', ' {"a": 1}\n'], [{"a": 1}] * 6)
    assert out["validity"] == pytest.approx(1 / 6)  # only the last one, surrounding whitespace is fine
    assert out["exact_match"] == pytest.approx(1 / 6)


def test_json_equal():
    assert json_equal({"a": [1, 2.0, None, "x"]}, {"a": [1.0, 2, None, "x"]})
    assert not json_equal(True, 1) and not json_equal(1, True) and not json_equal(False, 0)
    assert not json_equal([True], [1]) and not json_equal({"a": 0}, {"a": False})
    assert not json_equal("1", 1) and not json_equal(None, 0) and not json_equal([], {})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2}) and not json_equal([1, 2], [2, 1])


def test_bbox_iou():
    assert bbox_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert bbox_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert bbox_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0  # disjoint
    assert bbox_iou([0, 0, 4, 4], [1, 1, 2, 2]) == pytest.approx(1 / 16)  # contained
    assert bbox_iou([0.5, 0.5, 1.5, 1.0], [0.5, 0.5, 1.5, 1.0]) == 1.0
    assert bbox_iou([2, 2, 2, 2], [2, 2, 2, 2]) == 1.0  # identical zero-area boxes
    assert bbox_iou([2, 2, 2, 2], [3, 3, 3, 3]) == 0.0
    assert bbox_iou([10, 10, 0, 0], [0, 0, 10, 10]) == 0.0  # inverted box has zero area
    for bad in (None, [0, 0, 1], [0, 0, 1, "1"], [0, 0, True, 1], [0, 0, float("nan"), 1], "0 0 1 1"):
        assert bbox_iou(bad, [0, 0, 1, 1]) == 0.0


def test_bbox_missing_or_malformed_in_valid_prediction_scores_zero():
    out = json_scores(['{"label": "dog"}', '{"bbox": [0, 0, 1]}', "[0, 0, 1, 1]"], [{"bbox": [0, 0, 1, 1]}] * 3)
    assert out["validity"] == 1.0
    assert out["n_bbox"] == 3 and out["bbox_iou"] == 0.0


def test_empty_and_mismatched_inputs():
    assert json_scores([], []) == {
        "validity": 0.0,
        "exact_match": 0.0,
        "field_accuracy": 0.0,
        "bbox_iou": None,
        "n": 0,
        "n_bbox": 0,
    }
    with pytest.raises(ValueError):
        json_scores(["{}"], [{}, {}])
    with pytest.raises(ValueError):
        json_scores(["{}"], [{}], [None, None])
