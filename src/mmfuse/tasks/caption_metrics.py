"""Caption metrics computed like the COCO caption evaluation (coco-caption / pycocoevalcap), without Java.

The reference pipeline tokenises candidates and references with Stanford's PTBTokenizer (CoreNLP 3.4.1,
``-lowerCase -preserveLines``), drops the punctuation tokens in its ``PUNCTUATIONS`` list, and scores the
space-joined tokens with pycocoevalcap's scorers. Here:

- ``ptb_tokenize``: a pure-Python re-implementation of that tokenisation (lower case, clitics split:
  ``dog's -> dog 's``, ``don't -> do n't``, ``cannot -> can not``; brackets become ``-lrb- -rrb- -lsb-
  -rsb- -lcb- -rcb-`` and, as in the reference, stay: the reference lower-cases before it compares with
  its upper-case ``-LRB-`` entries; quotes, ``. , ; : ? ! - -- ...`` dropped; ``$ % # & * + =`` split off;
  abbreviations ``mr. st. etc. a.m. u.s.`` keep their period, ``no. fig.`` only before a number;
  runs such as ``?!`` and ``!!!`` are single tokens and stay, as in the reference). Checked against the
  Java tokenizer (pycocoevalcap 1.2, Java 17) on all 795 captions of coco_mini (train and val): 795
  identical; on 202 hand-made tricky captions and 901 abbreviation probes: all identical (the tests
  hold the Java outputs). Known differences, absent from COCO captions: emoticons (``:)`` gives
  ``:-rrb-`` in Java), ``y'all``/``'tis`` (Java ``y' all``/``'t is``), a capital letter abbreviation
  after a word at the end of a line (Java: ``plan B.`` -> ``plan b``, here ``plan b.``).
- ``caption_scores``: BLEU-1..4 (pycocoevalcap ``Bleu(4)``: corpus BLEU, ``closest`` reference length
  for the brevity penalty), ROUGE-L (``Rouge()``: per image max-LCS precision P and recall R over the
  references, ``(1 + b^2) P R / (R + b^2 P)`` with b = 1.2, averaged over images) and CIDEr-D
  (pycocoevalcap's ``Cider`` *is* CIDEr-D: tf-idf vectors of 1..4-grams with document frequencies from
  the references passed, the candidate's tf-idf clipped at the reference's (``min(c, r) * r``), a
  Gaussian length penalty ``exp(-(l_c - l_r)^2 / (2 sigma^2))`` with sigma = 6 where the length l is
  the number of *bigrams* of a caption (the reference code's quirk), averaged over n and references,
  times 10, averaged over images).
- METEOR and SPICE are absent: their only faithful implementations are Java programs.
- ``generation_sanity``: distinct captions, repeated n-grams and mean length of generated captions.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Hashable, Mapping, Sequence

from mmfuse.errors import MMFuseError

# coco-caption's PUNCTUATIONS (pycocoevalcap/tokenizer/ptbtokenizer.py), compared after lower-casing:
# the bracket entries are upper case there, so the lower-cased -lrb- ... tokens are never dropped.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_UNICODE = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
            "\u201e": '"', "\u2013": " -- ", "\u2014": " -- ", "\u2026": " ... ", "\u00a0": " "}

# abbreviations that keep their period (PTBLexer's ABBREV1 and ABTITLE); _NUM_ABBREV only before a number
_ABBREV = frozenset(  # case-insensitive as in PTBLexer 3.4.1, except "Miss." (upper-case M only)
    """jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri
    vs inc co cos corp ltd plc pty ptys pte ptes dept univ intl invt elec natl mfg mtg jr sr bros ph.d ed.d
    blvd rd esq etc al seq bldg tel est ext sq ft mr mrs ms dr drs prof profs sen sens rep reps atty attys
    lt col gen messrs gov govs adm rev maj sgt cpl pvt mt capt st ste ave pres lieut hon brig cmdr comdr pfc spc supt supts det m mme mlle""".split())
_NUM_ABBREV = frozenset("ca fig figs prop no nos art pp op".split())
_SPLIT_WORDS = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "gimme": 3, "lemme": 3}

_AN = r"[^\W_]"  # a letter or a digit (any script)
_TOKEN = re.compile(
    r"(?P<url>(?:https?|ftp)://\S+|www\.\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    r"|(?P<handle>[@#][A-Za-z_]\w*)"
    r"|(?P<amp>&amp;)"
    r"|(?P<caps>[A-Z]+&[A-Z]+)"
    r"|(?P<acro>[A-Za-z](?:\.[A-Za-z])*\.(?!" + _AN + r"))"
    rf"|(?P<num>\d+(?:[.,:/-]\d+)+|\.\d+)"
    rf"|(?P<nt>{_AN}+?(?=(?i:n't)(?!{_AN})))(?i:n't)?"
    rf"|(?P<nt2>(?i:n't)(?!{_AN}))"
    rf"|(?P<word>{_AN}+(?:[-/.]{_AN}+|'(?!(?i:s|m|d|ll|re|ve)(?!{_AN})|n')[^\W\d_]+)*)"
    rf"|(?P<clitic>'(?i:s|m|d|ll|re|ve)(?!{_AN})|'n'|(?<!{_AN})'\d\ds?)"
    r"|(?P<punct>[?!]+|\.+|-+|[,;:`'\"]+?)"
    r"|(?P<other>.)",
    re.UNICODE,
)


def _chunk_tokens(chunk: str, next_chunk: str) -> list[str]:
    """The PTB tokens of one whitespace-free piece of text (original case); ``next_chunk`` is the piece
    after it ("" at the end)."""
    out: list[str] = []
    pos = 0
    while pos < len(chunk):
        m = _TOKEN.match(chunk, pos)
        assert m is not None  # 'other' matches any character
        kind, text = m.lastgroup, m.group(0)
        pos = m.end()
        if kind == "nt":
            out.append(m.group("nt"))
            if text != m.group("nt"):
                out.append(text[len(m.group("nt")):])
            continue
        if kind == "word":
            low = text.lower()
            if low in _SPLIT_WORDS:
                k = _SPLIT_WORDS[low]
                out.extend([text[:k], text[k:]])
                continue
            if chunk[pos:pos + 1] == "." and (low in _ABBREV or text[:1] + low[1:] == "Miss" or (
                    low in _NUM_ABBREV and pos + 1 == len(chunk) and next_chunk[:1].isdigit())):
                out.append(text + ".")
                pos += 1
                continue
        elif kind == "amp":
            text = "&"
        elif kind == "punct" and text.startswith(".."):
            text = "..."  # PTB's ellipsis
        elif text == '"':
            text = "''"  # PTB's quotes: `` or ''
        out.append(_BRACKETS.get(text, text))
    return out


def ptb_tokenize(text: str) -> str:
    """coco-caption's tokenisation of one caption, without Java: Stanford PTBTokenizer
    (``-lowerCase -preserveLines``) then removal of the ``PUNCTUATIONS`` tokens; the kept tokens joined by
    single spaces (``""`` when none is left)."""
    for src, dst in _UNICODE.items():
        text = text.replace(src, dst)
    tokens: list[str] = []
    chunks = text.split()
    for i, chunk in enumerate(chunks):
        tokens.extend(_chunk_tokens(chunk, chunks[i + 1] if i + 1 < len(chunks) else ""))
    return " ".join(t for t in (tok.lower() for tok in tokens) if t not in PUNCTUATIONS)


def _check_inputs(candidates: Mapping, references: Mapping) -> None:
    if not candidates:
        raise MMFuseError("caption metrics: no candidate captions; evaluate at least one image")
    missing = [k for k in candidates if k not in references]
    extra = [k for k in references if k not in candidates]
    if missing or extra:
        raise MMFuseError(f"caption metrics: candidates and references must have the same image keys; "
                          f"without references: {missing[:3]}, without a candidate: {extra[:3]}")
    for key, cand in candidates.items():
        if not isinstance(cand, str):
            raise MMFuseError(f"caption metrics: the candidate of image {key!r} is {type(cand).__name__}, "
                              "expected one caption string per image")
        refs = references[key]
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not all(isinstance(r, str) for r in refs):
            raise MMFuseError(f"caption metrics: the references of image {key!r} must be a list of caption "
                              f"strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise MMFuseError(f"caption metrics: image {key!r} has no reference caption; every evaluated "
                              "image needs at least one")


def caption_scores(candidates: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
    """COCO caption scores of one generated caption per image against that image's references.

    Both sides are tokenised with ``ptb_tokenize``, then scored with pycocoevalcap's ``Bleu(4)``,
    ``Rouge()`` and ``Cider()`` (CIDEr-D; document frequencies from ``references``: scores depend on the
    whole evaluated set), as coco-caption's ``COCOEvalCap`` does. Returns ``bleu1 .. bleu4, rougeL, cider``
    as floats. An empty candidate is scored as the reference pipeline scores it (0 for ROUGE-L and
    CIDEr-D; it adds no n-gram and no length to BLEU). Raises ``MMFuseError`` when the keys differ, an
    image has no reference, or a value has the wrong type.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_inputs(candidates, references)
    res = {key: [ptb_tokenize(cand)] for key, cand in candidates.items()}
    gts = {key: [ptb_tokenize(ref) for ref in references[key]] for key in candidates}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores.update(rougeL=float(rouge), cider=float(cider))
    return scores


def generation_sanity(captions: Sequence[str], n: int = 2) -> dict[str, float]:
    """Diagnostics of the captions generated for one split (one caption per image), on ``ptb_tokenize``
    words ``w_i`` (caption i, N captions):

    - ``distinct`` = |{w_i}| / N: distinct tokenised captions per image (1/N when every image gets the
      same sentence);
    - ``repeated_ngrams`` = sum_i r_i / sum_i g_i, where g_i = max(len(w_i) - n + 1, 0) is the number of
      n-grams of caption i and r_i the number of them equal to an n-gram at an earlier position of the
      same caption (0 when no caption has an n-gram);
    - ``mean_length`` = sum_i len(w_i) / N.
    """
    if isinstance(captions, str) or len(captions) == 0:
        raise MMFuseError("generation_sanity: expected a non-empty list of generated captions (one per image)")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise MMFuseError(f"generation_sanity: n={n!r}, expected a positive integer (e.g. 2 for bigrams)")
    words = [ptb_tokenize(c).split() for c in captions]
    grams = repeats = 0
    for w in words:
        seen: set[tuple[str, ...]] = set()
        for i in range(len(w) - n + 1):
            gram = tuple(w[i:i + n])
            repeats += gram in seen
            seen.add(gram)
            grams += 1
    return {"distinct": len({" ".join(w) for w in words}) / len(words),
            "repeated_ngrams": repeats / grams if grams else 0.0,
            "mean_length": sum(len(w) for w in words) / len(words)}
