"""VQA accuracy against the published vectors and a plain transcription of the official evaluation loop."""

import ast
import random
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnifuse.tasks import metrics
from omnifuse.tasks.metrics import VQAAccuracy, exact_match, normalize_vqa_answer, vqa_accuracy

# ---------------------------------------------------------------------------------------------------------------------
# Reference: the official evaluation loop (GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py,
# revision a013f00), transcribed in its own style - answer records as dicts with an answer_id, answers mutated in
# place, the same tables - and trimmed to what computes the per-question accuracy.
# ---------------------------------------------------------------------------------------------------------------------


class OfficialStyleVQAEval:
    def __init__(self):
        self.contractions = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't", \
                             "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", \
                             "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", \
                             "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", \
                             "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", \
                             "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", \
                             "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", \
                             "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", \
                             "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", \
                             "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", \
                             "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've", \
                             "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've", \
                             "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've", \
                             "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", \
                             "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", \
                             "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", \
                             "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", \
                             "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", \
                             "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", \
                             "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", \
                             "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", \
                             "youll": "you'll", "youre": "you're", "youve": "you've"}  # fmt: skip
        self.manualMap = {'none': '0',
                          'zero': '0',
                          'one': '1',
                          'two': '2',
                          'three': '3',
                          'four': '4',
                          'five': '5',
                          'six': '6',
                          'seven': '7',
                          'eight': '8',
                          'nine': '9',
                          'ten': '10'
                          }  # fmt: skip
        self.articles = ['a',
                         'an',
                         'the'
                         ]  # fmt: skip
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = [';', r"/", '[', ']', '"', '{', '}',
                      '(', ')', '=', '+', '\\', '_', '-',
                      '>', '<', '@', '`', ',', '?', '!']  # fmt: skip

    def evaluate(self, gts, res):
        quesIds = list(gts)
        evalQA = {}
        for quesId in quesIds:
            for ansDic in gts[quesId]["answers"]:
                ansDic["answer"] = ansDic["answer"].replace("\n", " ")
                ansDic["answer"] = ansDic["answer"].replace("\t", " ")
                ansDic["answer"] = ansDic["answer"].strip()
            resAns = res[quesId]["answer"]
            resAns = resAns.replace("\n", " ")
            resAns = resAns.replace("\t", " ")
            resAns = resAns.strip()
            gtAcc = []
            gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]

            if len(set(gtAnswers)) > 1:
                for ansDic in gts[quesId]["answers"]:
                    ansDic["answer"] = self.processPunctuation(ansDic["answer"])
                    ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
                resAns = self.processPunctuation(resAns)
                resAns = self.processDigitArticle(resAns)

            for gtAnsDatum in gts[quesId]["answers"]:
                otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]
                matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
                acc = min(1, float(len(matchingAns)) / 3)
                gtAcc.append(acc)
            avgGTAcc = float(sum(gtAcc)) / len(gtAcc)
            evalQA[quesId] = avgGTAcc
        return evalQA

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        outText = self.periodStrip.sub("",
                                       outText,
                                       re.UNICODE)  # fmt: skip
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
            else:
                pass
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = " ".join(outText)
        return outText


def official_accuracy(prediction, gt_answers):
    """One question through the official-style loop; answer records carry answer_id 1..N as in the VQA files."""
    gts = {
        0: {
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(gt_answers)]
        }
    }
    res = {0: {"answer": prediction}}
    return OfficialStyleVQAEval().evaluate(gts, res)[0]


# ---------------------------------------------------------------------------------------------------------------------
# Published vectors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "gts", "expected"),
    [
        # All ten annotators agree -> no normalisation at all -> case matters.
        ("Circle", ["circle"] * 10, 0.0),
        ("circle", ["circle"] * 10, 1.0),
        # Whitespace clean-up happens regardless of agreement.
        (" circle\n", ["circle\t"] * 10, 1.0),
        # Agreeing answers: even punctuation is not stripped from the prediction.
        ("circle.", ["circle"] * 10, 0.0),
        # Leave-one-out: 2/8 -> (2*1/3 + 8*2/3)/10.
        ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),
        ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),
        ("yes", ["yes"] * 4 + ["no"] * 6, 1.0),
        ("yes", ["yes"] * 1 + ["no"] * 9, 0.3),
        ("maybe", ["yes"] * 4 + ["no"] * 6, 0.0),
        # Disagreeing answers -> number words, case, articles, punctuation all normalised on both sides.
        ("2", ["two"] * 3 + ["2"] * 7, 1.0),
        ("Two.", ["two"] * 3 + ["2"] * 7, 1.0),
        ("the Dog", ["dog"] * 5 + ["cat"] * 5, 1.0),
        ("dont know", ["don't know"] * 3 + ["no"] * 7, 0.9),
    ],
)
def test_published_vectors(prediction, gts, expected):
    assert vqa_accuracy(prediction, gts) == pytest.approx(expected, abs=1e-12)
    assert official_accuracy(prediction, gts) == pytest.approx(expected, abs=1e-12)


def test_fewer_than_ten_answers_follow_the_official_loop():
    # One answer: the only leave-one-out subset is empty, so the official accuracy is always 0.
    assert vqa_accuracy("circle", ["circle"]) == 0.0 == official_accuracy("circle", ["circle"])
    # Two answers: each subset holds one answer, worth 1/3 at most.
    assert vqa_accuracy("circle", ["circle", "circle"]) == pytest.approx(1 / 3)
    # Four answers all matching: each subset has 3 matches -> 1.0.
    assert vqa_accuracy("red", ["red"] * 4) == 1.0
    with pytest.raises(ValueError):
        vqa_accuracy("red", [])
    with pytest.raises(TypeError):
        vqa_accuracy("red", "red")


def test_tables_are_the_official_ones():
    ref = OfficialStyleVQAEval()
    assert ref.contractions == metrics._CONTRACTIONS
    assert ref.manualMap == metrics._MANUAL_MAP
    assert set(ref.articles) == metrics._ARTICLES
    assert ref.punct == list(metrics._PUNCT)
    assert ref.periodStrip.pattern == metrics._PERIOD_STRIP.pattern
    assert ref.commaStrip.pattern == metrics._COMMA_STRIP.pattern


@pytest.mark.parametrize(
    "text",
    [
        "1,000 dogs!", "yes, it is", "a.m.", "3.5", "x/y", "black-and-white", "black - white", "(two)", "it's",
        "Im here", "dont", "none", "The One", "." * 40, "what's up?", "a", "the the", "@home", "k-9, 2,3",
    ],
)  # fmt: skip
def test_normalisation_matches_official_functions(text):
    ref = OfficialStyleVQAEval()
    expected = ref.processDigitArticle(ref.processPunctuation(text.replace("\n", " ").replace("\t", " ").strip()))
    assert normalize_vqa_answer(text) == expected


def test_period_strip_removes_at_most_32_periods():
    # The official call passes re.UNICODE (32) where Pattern.sub takes `count`.
    assert normalize_vqa_answer("." * 40) == "." * 8


# ---------------------------------------------------------------------------------------------------------------------
# Random cases against the official-style loop
# ---------------------------------------------------------------------------------------------------------------------

_PIECES = [
    "yes", "no", "Yes", "NO", "two", "2", "Two", "none", "0", "zero", "ten", "10", "the", "a", "An", "cat", "dog",
    "dont", "don't", "isnt", "Im", "whats", "3.5", "1,000", "red.", "?", "!", "-", "/", "(", ")", ",", ";", "\"",
    "black-and-white", "x/y", "@", "..", "k-9", "ö", "",
]  # fmt: skip
_SEPARATORS = [" ", " ", "", "\n", "\t", ", ", ". ", "  ", "-"]


@st.composite
def _answers(draw):
    pieces = draw(st.lists(st.sampled_from(_PIECES), min_size=0, max_size=4))
    out = ""
    for i, piece in enumerate(pieces):
        out += (draw(st.sampled_from(_SEPARATORS)) if i else draw(st.sampled_from(["", " ", "\n"]))) + piece
    return out + draw(st.sampled_from(["", "", " ", "\t", "."]))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=st.data())
def test_random_cases_match_official_loop(data):
    pool = data.draw(st.lists(_answers(), min_size=1, max_size=4))
    gts = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=10))
    pred = data.draw(st.one_of(st.sampled_from(pool), _answers()))
    assert vqa_accuracy(pred, gts) == official_accuracy(pred, list(gts))  # bit-identical, same arithmetic


# ---------------------------------------------------------------------------------------------------------------------
# exact_match and the accumulator
# ---------------------------------------------------------------------------------------------------------------------


def test_exact_match():
    assert exact_match("Two.", "2") == 1.0
    assert exact_match("the Circle", "circle") == 1.0
    assert exact_match("square", "circle") == 0.0
    assert exact_match("Circle", "circle", normalize=False) == 0.0
    assert exact_match("circle", "circle", normalize=False) == 1.0


def test_accumulator():
    acc = VQAAccuracy()
    assert acc.compute() == {"vqa_accuracy": 0.0, "exact_match": 0.0, "n": 0, "per_answer_type": {}}
    acc.update(["yes", "2"], [["yes"] * 2 + ["no"] * 8, ["two"] * 3 + ["2"] * 7])
    other = VQAAccuracy()
    other.update(["Circle"], ["circle"])  # a single string is a one-answer list (easy-VQA)
    acc.merge(other)
    out = acc.compute()
    assert out["n"] == 3
    # vqa: 0.6, 1.0, 0.0 (one answer); exact match vs the modal normalised answer: "no" != "yes", "2", "circle".
    assert out["vqa_accuracy"] == pytest.approx((0.6 + 1.0 + 0.0) / 3)
    assert out["exact_match"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        acc.update(["a"], [])
    acc.reset()
    assert acc.compute()["n"] == 0


def test_accumulator_per_answer_type_matches_a_plain_loop():
    # Reference: the official evaluation's perAnswerType, i.e. the mean accuracy over the questions of each type,
    # computed here with a dict of lists; untyped questions count only in the overall mean.
    rng = random.Random(3)
    vocab = ["yes", "no", "2", "two", "red", "Red", "circle"]
    rows = []
    for _ in range(60):
        answers = [rng.choice(vocab) for _ in range(rng.choice([1, 3, 10]))]
        rows.append((rng.choice(vocab), answers, rng.choice(["yes/no", "number", "other", None])))
    expected: dict[str, list[float]] = {}
    for pred, answers, kind in rows:
        if kind is not None:
            expected.setdefault(kind, []).append(vqa_accuracy(pred, answers))
    halves = VQAAccuracy(), VQAAccuracy()
    for half, part in zip(halves, (rows[:25], rows[25:])):
        half.update([p for p, _, _ in part], [a for _, a, _ in part], [k for _, _, k in part])
    out = halves[0].merge(halves[1]).compute()
    assert out["per_answer_type"] == pytest.approx({k: sum(v) / len(v) for k, v in expected.items()})
    assert out["vqa_accuracy"] == pytest.approx(sum(vqa_accuracy(p, a) for p, a, _ in rows) / len(rows))
    with pytest.raises(ValueError, match="answer types"):
        VQAAccuracy().update(["yes"], [["yes"]], [])


def test_metrics_module_imports_only_the_standard_library():
    tree = ast.parse(Path(metrics.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_answer_types_that_share_a_metric_name_are_both_logged():
    from omnifuse.tasks.vqa import SINGLE_ANSWER_ANNOTATORS, VQATask, answer_type_metric_name

    assert answer_type_metric_name("yes/no") == answer_type_metric_name("yes no") == "yes_no"

    class Holder:  # compute_metrics only reads the accumulator
        _accuracy = VQAAccuracy()

    ten = SINGLE_ANSWER_ANNOTATORS
    Holder._accuracy.update(
        ["yes", "no", "no"], [["yes"] * ten, ["yes"] * ten, ["no"] * ten], ["yes/no", "yes no", "yes no"]
    )
    with pytest.warns(UserWarning, match="logged as"):
        metrics = VQATask.compute_metrics(Holder())
    # Types in sorted order: "yes no" (0.5: one of two right) keeps the name, "yes/no" (1.0) gets a suffix.
    assert metrics["vqa_accuracy/yes_no"] == 0.5 and metrics["vqa_accuracy/yes_no_2"] == 1.0
