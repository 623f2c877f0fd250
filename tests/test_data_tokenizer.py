"""The byte tokenizer is lossless: any text and any JSON value survive encode -> decode."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from omnifuse.data.collate import Collator
from omnifuse.data.sample import Sample
from omnifuse.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()

# Finite floats only: NaN/inf are not JSON. Text may hold any code point except lone surrogates (not encodable).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_text_round_trip(s: str):
    ids = TOK.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(s.encode("utf-8"))
    assert TOK.decode(ids) == s


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_round_trip(value):
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, separators=(",", ":"))):
        assert json.loads(TOK.decode(TOK.encode(text))) == value


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_collated_json_target_decodes_to_the_value(value):
    if value is None:
        return  # a null target means "no target"
    batch = Collator(TOK, max_target_len=100_000)([Sample(id="j", task="json", text="q", target=value)])
    ids = batch.target_ids[0][batch.target_mask[0]].tolist()
    assert ids[0] == TOK.task_id("json") and ids[-1] == TOK.eos_id
    assert json.loads(TOK.decode(ids[1:])) == value


def test_token_label_names_each_token():
    tok = ByteTokenizer()
    assert [tok.token_label(i) for i in tok.encode("a b{")] == ["a", " ", "b", "{"]
    # Each byte of a multi-byte character, and control bytes, by their hex value (a label is one token, not text).
    assert [tok.token_label(i) for i in tok.encode("é\n")] == ["<0xC3>", "<0xA9>", "<0x0A>"]
    assert tok.token_label(tok.eos_id) == "<eos>" and tok.token_label(tok.task_id("vqa")) == "<vqa>"
