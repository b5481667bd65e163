"""The answer processing and the accuracy of the official VQA evaluation, as data and our own code.

Reference: GT-Vision-Lab/VQA at commit c4e6a0e (the current version),
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (``VQAEval.evaluate``, ``processPunctuation``,
``processDigitArticle``; ``vqa/vqaEval.py`` at e6845dc has the same tables), under Python 3. The tables
below are its data (``PUNCTUATION`` = its ``punct``, ``NUMBERS`` = its ``manualMap``, ``ARTICLES``,
``CONTRACTIONS``); the code is ours. (The 2015 beta, 07aecec, had other tables: ``:`` and ``'`` as
marks, no ``{ } - !``, typographic apostrophes in the contractions.) ``tests/test_audit_metrics.py``
holds the reference's outputs on a fixed set of answers.

Prediction form ``normalize_answer(a)`` (what a predicted answer is compared as):

1. newlines and tabs become spaces, outer whitespace goes;
2. ``process_punctuation``: a mark of ``PUNCTUATION`` is deleted everywhere if it touches a space
   somewhere in the answer, or if the answer holds a digit-comma-digit (``1,000``); otherwise each
   occurrence becomes a space. Then every period not followed by a digit goes (the first
   ``PERIOD_LIMIT`` of them). So ``t-shirt`` -> ``t shirt``, ``yes!`` -> ``yes``, ``1,000`` -> ``1000``;
   ``:`` and ``'`` are not marks (``10:30`` and ``can't`` stay);
3. ``process_digit_article``: lower case, split on whitespace, number words become digits
   (``NUMBERS``, with ``none`` -> ``0``), articles go, contractions are spelt out (``dont`` ->
   ``don't``), words joined by one space.

Ground-truth forms (``ground_truth_forms``, what the human answers are compared as): step 2 only, and
only when the humans did not all give the same string; if they did, the strings as given.

Accuracy of a prediction whose form ``n`` of the ``N`` human answers equal: the mean over the ``N``
subsets that leave one human out of ``min(1, matches in the subset / 3)``::

    acc = (n min(1, (n - 1) / 3) + (N - n) min(1, n / 3)) / N     (N = 10: 0.3, 0.6, 0.9, 1 for n = 1, 2, 3, >= 4)

The reported VQA accuracy is its mean over the questions (the reference prints ``100 x`` that,
rounded to 2 decimals).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# Keys and values as the reference has them (ASCII apostrophes); the capitalised keys never match (words
# are lower-cased first) and are kept so that the table is the reference's.
CONTRACTIONS = {
    'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've", 'couldnt': "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", 'didnt': "didn't", 'doesnt': "doesn't",
    'dont': "don't", 'hadnt': "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't",
    'havent': "haven't", 'hed': "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's", 'howd': "how'd",
    'howll': "how'll", 'hows': "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm", 'Ive': "I've",
    'isnt': "isn't", 'itd': "it'd", "itd've": "it'd've", "it'dve": "it'd've", 'itll': "it'll", "let's": "let's",
    'maam': "ma'am", 'mightnt': "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    'mightve': "might've", 'mustnt': "mustn't", 'mustve': "must've", 'neednt': "needn't", 'notve': "not've",
    'oclock': "o'clock", 'oughtnt': "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    'shant': "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", 'shouldve': "should've",
    'shouldnt': "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd',
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", 'somebodyll': "somebody'll",
    'somebodys': "somebody's", 'someoned': "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    'someonell': "someone'll", 'someones': "someone's", 'somethingd': "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", 'somethingll': "something'll",
    'thats': "that's", 'thered': "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    'therere': "there're", 'theres': "there's", 'theyd': "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    'theyll': "they'll", 'theyre': "they're", 'theyve': "they've", 'twas': "'twas", 'wasnt': "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", 'weve': "we've", 'werent': "weren't", 'whatll': "what'll",
    'whatre': "what're", 'whats': "what's", 'whatve': "what've", 'whens': "when's", 'whered': "where'd",
    'wheres': "where's", 'whereve': "where've", 'whod': "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    'wholl': "who'll", 'whos': "who's", 'whove': "who've", 'whyll': "why'll", 'whyre': "why're", 'whys': "why's",
    'wont': "won't", 'wouldve': "would've", 'wouldnt': "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", 'yall': "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", 'youd': "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", 'youll': "you'll", 'youre': "you're", 'youve': "you've",
}
PERIOD_LIMIT = 32  # the reference passes re.UNICODE (= 32) where re.sub takes its count

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")


def process_punctuation(text: str) -> str:
    """Step 2 of the module docstring."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        delete = delete_all or mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=PERIOD_LIMIT)


def process_digit_article(text: str) -> str:
    """Step 3 of the module docstring."""
    words = (NUMBERS.get(w, w) for w in text.lower().split())
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The prediction form of ``answer`` (steps 1-3); also the form the answer vocabulary is built in."""
    return process_digit_article(process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


def ground_truth_forms(answers: Sequence[str]) -> list[str]:
    """The human answers of one question as the evaluation compares them (module docstring)."""
    return [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)


def leave_one_out_accuracy(n: int, annotators: int) -> float:
    """``acc`` of a prediction that ``n`` of ``annotators`` human answers match (module docstring)."""
    if annotators < 1 or not 0 <= n <= annotators:
        raise ValueError(f"{n} matching answers of {annotators}: expected 0 <= n <= annotators, annotators >= 1")
    return (n * min(1.0, (n - 1) / 3) + (annotators - n) * min(1.0, n / 3)) / annotators


def official_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of one predicted answer against the question's human answers."""
    form = normalize_answer(prediction)
    return leave_one_out_accuracy(sum(f == form for f in ground_truth_forms(answers)), len(answers))


def prediction_forms(vocabulary: Sequence[str]) -> dict[str, list[int]]:
    """``{prediction form: [indices of the vocabulary answers with that form]}``. A form can have several
    answers (``two`` and ``2``, ``dog`` and ``a dog``) unless the vocabulary holds forms only, as
    ``data=vqa_v2``'s does."""
    forms: dict[str, list[int]] = defaultdict(list)
    for i, answer in enumerate(vocabulary):
        forms[normalize_answer(answer)].append(i)
    return dict(forms)


def answer_accuracies(answers: Sequence[str], forms: dict[str, list[int]]) -> dict[int, float]:
    """``{vocabulary index: official_accuracy(vocabulary[index], answers)}`` for every answer of the
    vocabulary (``forms = prediction_forms(vocabulary)``) that scores above 0; the others score 0."""
    counts = Counter(ground_truth_forms(answers))
    return {i: leave_one_out_accuracy(n, len(answers)) for form, n in counts.items() for i in forms.get(form, ())}
