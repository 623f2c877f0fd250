"""Caption metrics against pycocoevalcap's pure-Python scorers (a dev/test dependency only)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnifuse.tasks.metrics import caption_scores, tokenize_caption

Bleu = pytest.importorskip("pycocoevalcap.bleu.bleu").Bleu
Rouge = pytest.importorskip("pycocoevalcap.rouge.rouge").Rouge
Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider

TOL = 1e-6


def peer_scores(hyps, refs):
    """pycocoevalcap on the same pre-tokenised text: gts = references, res = [hypothesis]."""
    gts = {k: list(v) for k, v in refs.items()}
    res = {k: [hyps[k]] for k in refs}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {
        "bleu1": bleu[0],
        "bleu2": bleu[1],
        "bleu3": bleu[2],
        "bleu4": bleu[3],
        "rouge_l": float(rouge),
        "cider_d": float(cider),
    }


def assert_matches_peer(hyps, refs):
    ours = caption_scores(hyps, refs)
    peer = peer_scores(hyps, refs)
    assert ours.keys() == peer.keys()
    for key in peer:
        assert ours[key] == pytest.approx(peer[key], abs=TOL, rel=TOL), key
    return ours


CORPUS_REFS = {
    "img1": ["a man is riding a horse on the beach", "a person rides a brown horse", "a man on a horse near the sea"],
    "img2": ["two dogs play with a ball in the grass", "two dogs are playing in a field", "dogs chase a red ball"],
    "img3": ["a plate of food with broccoli and rice", "a dish with rice and vegetables"],
    "img4": ["a red bus drives down the street", "a double decker bus on a city street", "a bus on the road"],
}
CORPUS_HYPS = {
    "img1": "a man riding a horse on a beach",
    "img2": "two dogs playing with a ball",
    "img3": "a plate of rice and broccoli",
    "img4": "a bus on a street",
}


def test_hand_corpus_matches_peer():
    ours = assert_matches_peer(CORPUS_HYPS, CORPUS_REFS)
    assert 0 < ours["bleu4"] < ours["bleu3"] < ours["bleu2"] < ours["bleu1"] <= 1
    assert ours["cider_d"] > 0


def test_empty_hypothesis_matches_peer():
    hyps = dict(CORPUS_HYPS, img2="")
    ours = assert_matches_peer(hyps, CORPUS_REFS)
    assert ours["rouge_l"] < caption_scores(CORPUS_HYPS, CORPUS_REFS)["rouge_l"]


def test_all_hypotheses_empty_scores_zero():
    ours = assert_matches_peer(dict.fromkeys(CORPUS_REFS, ""), CORPUS_REFS)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in ours.values())


def test_hypothesis_longer_than_references_matches_peer():
    hyps = dict(CORPUS_HYPS, img1="a man is riding a horse on the beach a man is riding a horse on the beach at dusk")
    ours = assert_matches_peer(hyps, CORPUS_REFS)
    # With every hypothesis longer than its closest reference there is no brevity penalty.
    long = {k: " ".join([v] * 3) for k, v in CORPUS_HYPS.items()}
    assert_matches_peer(long, CORPUS_REFS)
    assert ours["bleu1"] > 0


def test_single_image_matches_peer_and_cider_is_zero():
    refs = {"only": ["a cat sits on a mat", "the cat is on the mat"]}
    ours = assert_matches_peer({"only": "a cat on the mat"}, refs)
    assert ours["cider_d"] == 0.0  # IDF over one image: log(1) - log(1) = 0 for every n-gram
    assert ours["bleu1"] > 0 and ours["rouge_l"] > 0


def test_closest_reference_length_tie_takes_the_shorter():
    # Hypothesis of 4 words, references of 3 and 5 words: "closest" ties and takes 3 -> no brevity penalty.
    refs = {1: ["x y z", "p q r s t"], 2: ["u v w"]}
    ours = assert_matches_peer({1: "x y z k", 2: "u v w"}, refs)
    assert ours["bleu1"] == pytest.approx(6 / 7, abs=1e-9)


def test_empty_reference_matches_peer():
    # pycocoevalcap reads an empty caption as one empty token: empty hypothesis vs empty reference is a perfect
    # ROUGE-L match; we keep that value.
    refs = {1: ["", "a b c"], 2: ["c d e"], 3: ["a b"]}
    assert_matches_peer({1: "", 2: "c d", 3: "a b"}, refs)
    assert_matches_peer({1: "a b", 2: "c", 3: ""}, refs)


def test_repeated_ngrams_clip_like_peer():
    refs = {1: ["the cat the cat", "a cat"], 2: ["a dog"], 3: ["the the the"]}
    assert_matches_peer({1: "the the the the cat cat", 2: "dog dog dog", 3: "the"}, refs)


def test_tokenizer_option_and_tokenize_caption():
    assert tokenize_caption("  A man's Hat, black-and-white.\n") == "a mans hat black and white"
    assert tokenize_caption("Dogs!!! (two) of_them") == "dogs two of them"
    assert tokenize_caption("") == ""
    raw_h = {k: v.upper() + "." for k, v in CORPUS_HYPS.items()}
    raw_r = {k: [r.capitalize() + " ." for r in v] for k, v in CORPUS_REFS.items()}
    assert caption_scores(raw_h, raw_r, tokenizer=tokenize_caption) == pytest.approx(
        caption_scores(CORPUS_HYPS, CORPUS_REFS), abs=1e-12
    )


def test_input_errors():
    with pytest.raises(ValueError, match="ids differ"):
        caption_scores({1: "a"}, {2: ["a"]})
    with pytest.raises(ValueError, match="at least one"):
        caption_scores({}, {})
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({1: "a"}, {1: []})
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({1: "a"}, {1: "a b"})


# A small seeded vocabulary so that n-grams up to 4 overlap often.
VOCAB = ["a", "the", "cat", "dog", "on", "mat", "red", "runs", "is", "sits"]


def _sentence(min_size):
    return st.lists(st.sampled_from(VOCAB), min_size=min_size, max_size=12).map(" ".join)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    data=st.lists(
        st.tuples(_sentence(0), st.lists(_sentence(1), min_size=1, max_size=5)),
        min_size=1,
        max_size=6,
    )
)
def test_random_corpora_match_peer(data):
    hyps = {i: h for i, (h, _) in enumerate(data)}
    refs = {i: r for i, (_, r) in enumerate(data)}
    assert_matches_peer(hyps, refs)
