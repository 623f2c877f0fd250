"""Task metrics: VQA accuracy, caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D), JSON structured-output metrics.

Pure Python (standard library only), so the metrics run anywhere predictions land: in a LightningModule's
validation epoch, in a batch-inference job, or in a notebook over a JSONL file of predictions.

VQA accuracy
    :func:`vqa_accuracy` reproduces the official VQA evaluation (GT-Vision-Lab/VQA,
    ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, revision a013f00 on master) question by question:

    1. newline and tab become spaces and both ends are stripped, for the prediction and every answer;
    2. *only when the ground-truth answers disagree* (``len(set(gt_answers)) > 1`` after step 1) are the answers
       and the prediction normalised: punctuation (``processPunctuation``), then lower-casing, number words to
       digits, article removal and contraction repair (``processDigitArticle``). When all annotators gave the
       same string nothing is normalised, so the comparison is exact and case-sensitive: ten "circle" answers
       score the prediction "Circle" 0. (The official rationale: such questions are often OCR questions whose
       exact text matters.) Older revisions of the file normalised the prediction unconditionally; the current
       one does not, and we follow the current one.
    3. accuracy = mean over the N leave-one-out subsets of the N answers of ``min(1, #matches / 3)``.

    With fewer than 10 answers the official loop still leaves one answer out per subset. With a *single* answer
    every subset is empty, so the official accuracy is always 0: single-answer datasets (easy-VQA) should read
    :func:`exact_match`, which :class:`VQAAccuracy` reports alongside.

Caption metrics
    :func:`caption_scores` reproduces the coco-caption scorers as shipped in ``pycocoevalcap`` 1.2 on
    pre-tokenised text (words separated by whitespace; :func:`tokenize_caption` is a simple tokeniser):
    corpus BLEU-1..4 with the "closest" reference length and the scorer's tiny/small smoothing constants,
    ROUGE-L (beta 1.2, precision and recall each maximised over references), and CIDEr-D. pycocoevalcap's
    ``Cider`` *is* CIDEr-D: n-grams up to 4, TF-IDF with document frequencies counted over the evaluated
    references, clipping of the hypothesis weights by the reference weights, a Gaussian length penalty with
    sigma 6, and a factor 10. Its "length" is the number of bigrams (``words - 1``), kept here as is.
    Because the IDF comes from the evaluated set, CIDEr-D of a single image is always 0 (log(1) = 0).

JSON metrics
    :func:`json_scores` scores JSON predictions against JSON targets: validity (parses as strict JSON and, where
    a schema and a validator are given, validates), exact match, field accuracy, and the IoU of ``bbox`` fields.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

__all__ = [
    "VQAAccuracy",
    "bbox_iou",
    "caption_scores",
    "exact_match",
    "json_equal",
    "json_scores",
    "normalize_vqa_answer",
    "tokenize_caption",
    "vqa_accuracy",
]

# ----------------------------------------------------------------------------------------------------------------------
# VQA accuracy
# ----------------------------------------------------------------------------------------------------------------------

# The tables below are data from the official evaluation (vqaEval.py, VQAEval.__init__), reproduced verbatim,
# including its oddities: the capitalised keys ("Im", "Ive", "Id've", "I'dve") can never match because words are
# lower-cased first, and "somebody'd" maps to "somebodyd".
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
_PUNCT: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# Verbatim from the official code. "(?!<=\d)" is a negative *lookahead* for the two characters "<=" and a digit
# (a typo for a lookbehind), which can never match in front of a "." - so the pattern removes every period that
# is not followed by a digit ("3.5" keeps its period, "2." and "a.m." lose theirs).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# The official code calls ``periodStrip.sub("", text, re.UNICODE)``; the third positional argument of
# ``Pattern.sub`` is ``count``, so at most int(re.UNICODE) == 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _clean_whitespace(text: str) -> str:
    """The official clean-up applied to every answer: newline and tab become spaces, both ends stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """``VQAEval.processPunctuation``: drop or space out punctuation, then strip periods not before a digit."""
    out = text
    # The tests look at the *input* text: a mark next to a space, or any digit-comma-digit anywhere in the answer,
    # deletes the mark; otherwise it becomes a space.
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """``VQAEval.processDigitArticle``: lower-case, number words to digits, drop articles, repair contractions."""
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """The full official normalisation of one answer: whitespace clean-up, punctuation, digits/articles/contractions.

    This is what :func:`vqa_accuracy` applies when the ground-truth answers disagree, and what :func:`exact_match`
    always applies.
    """
    return _process_digit_article(_process_punctuation(_clean_whitespace(answer)))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against the human answers of one question, in [0, 1].

    Mirrors the official loop exactly (see the module docstring): normalisation only when the answers disagree,
    then the mean over the N leave-one-out subsets of ``min(1, matches / 3)``. Each official answer record carries
    its own ``answer_id``, so "leave one out" removes exactly one answer even when several are the same string;
    here answers are left out by position, which is the same thing.

    Any number of answers is accepted and treated the way the official code treats it: with 10 answers this is
    the published VQA metric; with a single answer the only subset is empty and the result is always 0.0 (use
    :func:`exact_match` for single-answer data). An empty ``gt_answers`` raises ``ValueError`` (the official
    code divides by zero).
    """
    if isinstance(gt_answers, str):
        raise TypeError("gt_answers must be a sequence of answer strings, not a single string")
    if len(gt_answers) == 0:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    answers = [_clean_whitespace(a) for a in gt_answers]
    pred = _clean_whitespace(prediction)
    if len(set(answers)) > 1:
        answers = [_process_digit_article(_process_punctuation(a)) for a in answers]
        pred = _process_digit_article(_process_punctuation(pred))
    own = [a == pred for a in answers]
    total = sum(own)
    # Same terms, same order, same float arithmetic as the official loop, so results agree bit for bit.
    accs = [min(1, float(total - int(hit)) / 3) for hit in own]
    return float(sum(accs)) / len(accs)


def exact_match(prediction: str, answer: str, *, normalize: bool = True) -> float:
    """1.0 when the prediction equals the answer, else 0.0.

    With ``normalize=True`` (default) both sides first go through :func:`normalize_vqa_answer` (whitespace,
    punctuation, case, number words, articles, contractions), so "Two." matches "2" and "the Circle" matches
    "circle". With ``normalize=False`` the strings are compared as given.
    """
    if normalize:
        return float(normalize_vqa_answer(prediction) == normalize_vqa_answer(answer))
    return float(prediction == answer)


def _reference_answer(gt_answers: Sequence[str]) -> str:
    """The answer exact match is measured against: the most frequent normalised answer (first seen wins ties).

    For VQA v2 data this is the role of ``multiple_choice_answer``; for single-answer data it is that answer.
    """
    counts = Counter(normalize_vqa_answer(a) for a in gt_answers)
    return counts.most_common(1)[0][0]  # Counter.most_common keeps first-insertion order among equal counts


class VQAAccuracy:
    """Accumulates VQA accuracy and exact match over batches; pure Python, safe to merge across workers.

    ``update(preds, gts_lists, answer_types=None)`` takes one prediction string per question and, per question,
    either the list of human answers or a single answer string (treated as a one-answer list). ``compute()`` returns
    ``{"vqa_accuracy": mean official accuracy, "exact_match": mean exact match, "n": number of questions,
    "per_answer_type": {type: mean official accuracy}}``; exact match compares the normalised prediction with the
    most frequent normalised answer. ``answer_types`` (one string or None per question, e.g. VQA's "yes/no",
    "number", "other") gives the breakdown the official evaluation reports as ``perAnswerType``; questions without
    a type count only in the overall means. With no questions seen both means are 0.0 and ``n`` is 0.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.vqa_sum = 0.0
        self.exact_sum = 0.0
        self.n = 0
        self.by_type: dict[str, list[float]] = {}  # answer type -> [vqa_sum, n]

    def update(
        self,
        preds: Sequence[str],
        gts_lists: Sequence[Sequence[str] | str],
        answer_types: Sequence[str | None] | None = None,
    ) -> None:
        if len(preds) != len(gts_lists):
            raise ValueError(f"got {len(preds)} predictions but {len(gts_lists)} ground-truth entries")
        if answer_types is not None and len(answer_types) != len(preds):
            raise ValueError(f"got {len(preds)} predictions but {len(answer_types)} answer types")
        for i, (pred, gts) in enumerate(zip(preds, gts_lists)):
            answers = [gts] if isinstance(gts, str) else list(gts)
            accuracy = vqa_accuracy(pred, answers)
            self.vqa_sum += accuracy
            self.exact_sum += float(normalize_vqa_answer(pred) == _reference_answer(answers))
            self.n += 1
            kind = answer_types[i] if answer_types is not None else None
            if kind is not None:
                totals = self.by_type.setdefault(str(kind), [0.0, 0])
                totals[0] += accuracy
                totals[1] += 1

    def merge(self, other: VQAAccuracy) -> VQAAccuracy:
        """Add another accumulator's state into this one (for example gathered from other ranks)."""
        self.vqa_sum += other.vqa_sum
        self.exact_sum += other.exact_sum
        self.n += other.n
        for kind, (total, count) in other.by_type.items():
            mine = self.by_type.setdefault(kind, [0.0, 0])
            mine[0] += total
            mine[1] += count
        return self

    def compute(self) -> dict[str, Any]:
        per_type = {kind: total / count for kind, (total, count) in sorted(self.by_type.items())}
        if self.n == 0:
            return {"vqa_accuracy": 0.0, "exact_match": 0.0, "n": 0, "per_answer_type": per_type}
        return {
            "vqa_accuracy": self.vqa_sum / self.n,
            "exact_match": self.exact_sum / self.n,
            "n": self.n,
            "per_answer_type": per_type,
        }


# ----------------------------------------------------------------------------------------------------------------------
# Caption metrics
# ----------------------------------------------------------------------------------------------------------------------

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^\w\s]|_")


def tokenize_caption(text: str) -> str:
    """A simple caption tokeniser: lower-case, drop apostrophes, punctuation to spaces, single-spaced words.

    ``"A man's hat, black-and-white."`` -> ``"a mans hat black and white"``. It is not the Stanford PTB tokeniser
    that the coco-caption toolkit runs through Java (that one splits "don't" into "do n't"); scores on text
    tokenised here are comparable with each other and with pycocoevalcap's scorers fed the same text.
    """
    text = _APOSTROPHES.sub("", text.lower())
    return " ".join(_NON_WORD.sub(" ", text).split())


def _ngram_counts(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _bleu(hyps: Sequence[list[str]], refs: Sequence[list[list[str]]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as pycocoevalcap's ``BleuScorer.compute_score(option="closest")`` computes it.

    Clipped n-gram matches and n-gram counts are summed over the corpus; the reference length of each sentence
    is the one closest to the hypothesis length (the shorter wins a tie); the brevity penalty uses the summed
    lengths. The scorer's smoothing constants (1e-15 added to matches and lengths, 1e-9 to counts) are kept so
    that zero matches give the same tiny-but-nonzero values.
    """
    tiny, small = 1e-15, 1e-9
    correct = [0] * n
    guess = [0] * n
    test_len = 0
    ref_len = 0
    for words, ref_list in zip(hyps, refs):
        max_counts: dict[tuple[str, ...], int] = {}
        for ref in ref_list:
            for ngram, count in _ngram_counts(ref, n).items():
                max_counts[ngram] = max(max_counts.get(ngram, 0), count)
        length = len(words)
        test_len += length
        ref_len += min((abs(len(r) - length), len(r)) for r in ref_list)[1]
        for k in range(n):
            guess[k] += max(0, length - k)
        for ngram, count in _ngram_counts(words, n).items():
            correct[len(ngram) - 1] += min(max_counts.get(ngram, 0), count)
    scores = []
    product = 1.0
    for k in range(n):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (one-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diag + 1 if x == y else max(row[j], row[j - 1])
            diag = above
    return row[len(b)]


def _rouge_l(hyp: Sequence[str], refs: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Sentence ROUGE-L as pycocoevalcap's ``Rouge.calc_score``: max precision and max recall, then F-beta.

    pycocoevalcap splits on single spaces, so an empty sentence is one empty token: an empty hypothesis against
    an empty reference has precision = recall = 1 there, and against a non-empty one 0. We keep those values
    (empty vs empty is a perfect match, otherwise 0) without the empty-token artefact elsewhere.
    """
    best_p = best_r = 0.0
    for ref in refs:
        if not hyp or not ref:
            p = r = 1.0 if (not hyp and not ref) else 0.0
        else:
            lcs = _lcs_length(ref, hyp)
            p, r = lcs / len(hyp), lcs / len(ref)
        best_p, best_r = max(best_p, p), max(best_r, r)
    if best_p == 0 or best_r == 0:
        return 0.0
    return (1 + beta**2) * best_p * best_r / (best_r + beta**2 * best_p)


def _cider_d(hyps: Sequence[list[str]], refs: Sequence[list[list[str]]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-image CIDEr-D as pycocoevalcap's ``CiderScorer`` (its ``Cider`` class) computes it.

    IDF over the evaluated images' references: ``log(N_images) - log(max(1, df))``; TF-IDF vectors per n-gram
    order; the similarity of orders 1..n sums ``min(w_hyp, w_ref) * w_ref`` (clipping) over the cosine
    normalisation, times ``exp(-delta^2 / (2 sigma^2))`` where delta is the difference in *bigram* counts (the
    scorer's "length"); mean over orders, mean over references, times 10.
    """
    ref_counts = [[_ngram_counts(r, n) for r in ref_list] for ref_list in refs]
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for counts_list in ref_counts:
        doc_freq.update({ngram for counts in counts_list for ngram in counts})
    log_n_images = math.log(float(len(refs)))

    def to_vec(counts: Counter[tuple[str, ...]]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        sq_norm = [0.0] * n
        length = 0
        for ngram, tf in counts.items():
            order = len(ngram) - 1
            weight = float(tf) * (log_n_images - math.log(max(1.0, float(doc_freq.get(ngram, 0)))))
            vec[order][ngram] = weight
            sq_norm[order] += weight**2
            if order == 1:  # pycocoevalcap's length counts bigrams (its `if n == 1`)
                length += tf
        return vec, [math.sqrt(s) for s in sq_norm], length

    scores = []
    for words, counts_list in zip(hyps, ref_counts):
        vec_h, norm_h, len_h = to_vec(_ngram_counts(words, n))
        total = [0.0] * n
        for counts in counts_list:
            vec_r, norm_r, len_r = to_vec(counts)
            penalty = math.exp(-(float(len_h - len_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_h[k].items())
                if norm_h[k] != 0 and norm_r[k] != 0:
                    val /= norm_h[k] * norm_r[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(counts_list) * 10.0)
    return scores


def caption_scores(
    hypotheses: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    tokenizer: Callable[[str], str] | None = None,
) -> dict[str, float]:
    """Corpus caption metrics: ``{"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"}``.

    ``hypotheses`` maps an image id to one caption, ``references`` the same ids to one or more reference captions.
    Text is taken as pre-tokenised (words separated by whitespace; lower-case it first) unless a ``tokenizer``
    (for example :func:`tokenize_caption`) is given, which is applied to every caption. BLEU is corpus-level,
    ROUGE-L and CIDEr-D are means over images, all as in pycocoevalcap (see the module docstring). Raises
    ``ValueError`` when the id sets differ, when there are no images, or when an image has no references.
    """
    if set(hypotheses) != set(references):
        missing = set(references) - set(hypotheses)
        extra = set(hypotheses) - set(references)
        raise ValueError(f"hypothesis and reference ids differ (missing: {sorted(map(str, missing))[:5]}, "
                         f"extra: {sorted(map(str, extra))[:5]})")  # fmt: skip
    if not hypotheses:
        raise ValueError("caption_scores needs at least one image")
    prep = tokenizer if tokenizer is not None else (lambda s: s)
    hyps: list[list[str]] = []
    refs: list[list[list[str]]] = []
    for image_id, ref_list in references.items():
        if isinstance(ref_list, str) or len(ref_list) == 0:
            raise ValueError(f"image {image_id!r}: references must be a non-empty list of captions")
        hyps.append(prep(hypotheses[image_id]).split())
        refs.append([prep(r).split() for r in ref_list])
    bleu = _bleu(hyps, refs)
    rouge = [_rouge_l(h, r) for h, r in zip(hyps, refs)]
    cider = _cider_d(hyps, refs)
    return {
        "bleu1": bleu[0],
        "bleu2": bleu[1],
        "bleu3": bleu[2],
        "bleu4": bleu[3],
        "rouge_l": sum(rouge) / len(rouge),
        "cider_d": sum(cider) / len(cider),
    }


# ----------------------------------------------------------------------------------------------------------------------
# JSON structured-output metrics
# ----------------------------------------------------------------------------------------------------------------------

_INVALID = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str) -> Any:
    """Strict JSON (RFC 8259): Python's NaN / Infinity extensions are rejected. Returns ``_INVALID`` on failure."""
    if not isinstance(text, str):
        return _INVALID
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return _INVALID


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: like ``==`` but ``true`` is not ``1`` (numbers still compare by value: 1 == 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float, dict, list)) or isinstance(b, (int, float, dict, list)):
        return False
    return a == b  # str / None


def _as_box(value: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return float(value[0]), float(value[1]), float(value[2]), float(value[3])


def bbox_iou(pred: Any, target: Any) -> float:
    """IoU of two ``[x0, y0, x1, y1]`` boxes; 0.0 when either is malformed (not 4 finite numbers).

    A box with ``x1 < x0`` or ``y1 < y0`` has zero area. Two zero-area boxes have IoU 1.0 when identical, else 0.0.
    """
    a, b = _as_box(pred), _as_box(target)
    if a is None or b is None:
        return 0.0
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = area_a + area_b - inter
    if union <= 0.0:
        return 1.0 if a == b else 0.0
    return inter / union


def _field_accuracy(pred: Any, target: Any) -> float:
    """Fraction of the target object's top-level fields that the prediction reproduces exactly."""
    if not isinstance(target, dict) or not target:
        return float(json_equal(pred, target))  # a non-object (or empty) target is one field: the whole value
    if not isinstance(pred, dict):
        return 0.0
    return sum(k in pred and json_equal(pred[k], v) for k, v in target.items()) / len(target)


def json_scores(
    predictions: Sequence[str],
    targets: Sequence[Any],
    schemas: Sequence[dict | None] | None = None,
    validate: Callable[[Any, dict], bool] | None = None,
) -> dict[str, float | int | None]:
    """Metrics for JSON outputs, each a mean over samples.

    - ``validity``: the prediction parses as strict JSON and, when the sample has a schema and ``validate`` is
      given, ``validate(parsed, schema)`` is true. ``validate`` is injected (for example
      ``lambda x, s: jsonschema.Draft202012Validator(s).is_valid(x)``) so jsonschema is not a runtime dependency;
      without it schemas are not checked.
    - ``exact_match``: the parsed prediction equals the target as JSON (:func:`json_equal`).
    - ``field_accuracy``: per sample, the fraction of the target's top-level fields reproduced exactly
      (a non-object target counts as one field), then the mean over samples.
    - ``bbox_iou``: over the samples whose target is an object with a ``"bbox"`` field, the IoU of the
      prediction's ``"bbox"`` with it (:func:`bbox_iou`; 0 when missing or malformed); ``None`` when no target
      has a bbox. ``n_bbox`` says how many samples it averages.

    An invalid prediction (unparseable, or failing its schema) scores 0 on every metric. With no samples every
    mean is 0.0 (``bbox_iou`` None) and ``n`` is 0.
    """
    n = len(predictions)
    if len(targets) != n or (schemas is not None and len(schemas) != n):
        lens = (n, len(targets), None if schemas is None else len(schemas))
        raise ValueError(f"predictions, targets and schemas differ in length: {lens}")
    valid_sum = exact_sum = field_sum = iou_sum = 0.0
    n_bbox = 0
    for i, (text, target) in enumerate(zip(predictions, targets)):
        schema = None if schemas is None else schemas[i]
        parsed = _parse_json(text)
        ok = parsed is not _INVALID and (schema is None or validate is None or bool(validate(parsed, schema)))
        has_box = isinstance(target, dict) and "bbox" in target
        n_bbox += has_box
        if not ok:
            continue
        valid_sum += 1.0
        exact_sum += float(json_equal(parsed, target))
        field_sum += _field_accuracy(parsed, target)
        if has_box and isinstance(parsed, dict):
            iou_sum += bbox_iou(parsed.get("bbox"), target["bbox"])
    denom = max(n, 1)
    return {
        "validity": valid_sum / denom,
        "exact_match": exact_sum / denom,
        "field_accuracy": field_sum / denom,
        "bbox_iou": iou_sum / n_bbox if n_bbox else None,
        "n": n,
        "n_bbox": n_bbox,
    }
