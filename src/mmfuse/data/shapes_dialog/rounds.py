"""The rounds of a ``shapes_dialog`` dialog, the answer vocabulary and the candidate answers.

Two kinds of round (``KIND_NAMES``):

- ``image`` (kind 0): the question is self-contained; image + question fix the answer. It names its
  object uniquely (scene colours and shapes are distinct):
  ``what colour is the {shape}?`` -> ``{colour}``; ``what shape is the {colour} object?`` -> ``a {shape}``;
  ``is there a {colour} {shape}?`` -> ``yes there is`` / ``no there is not``;
  ``is there a {shape}?`` / ``is there a {colour} object?`` -> ``yes`` / ``no``;
  ``how many objects are there?`` -> ``two`` / ``three``.
- ``history`` (kind 1): the question says "it": ``what colour is it?`` -> ``it is {colour}``;
  ``what shape is it?`` -> ``it is a {shape}``; ``is it {colour}?`` / ``is it a {shape}?`` ->
  ``yes it is`` / ``no it is not``; ``what is it?`` -> ``a {colour} {shape}``.

**The referent rule.** A round *names* an object when it is an image round whose question picks out an
object present in the scene: ``what colour is the {shape}?``, ``what shape is the {colour} object?``,
and the three ``is there ...?`` questions when the answer is yes. "It" in history round ``r`` is the
object named by the most recent round before ``r`` that names one (history rounds name nothing new, so
a run of history rounds keeps one referent). Round 1 is always ``what colour is the {shape}?`` or
``what shape is the {colour} object?``, and a history round only follows a round that named an object
or another history round (never a count or a "no" round), so "it" is always the object just talked about.

**Balance.** Every attribute a question asks about is drawn uniformly among the scene's objects, so the
answer to each question string is uniform over its values across scenes: ``is it {c}?`` asks, with
probability 1/2 each, the referent's colour (yes) or another object's (no); ``is there ...?`` asks
with probability 1/2 each about a present object (yes) or an absent colour / shape / combination
(uniform, no). A history question asks only about colours and shapes in the scene, and the objects'
colours and shapes are distinct, so without the history its answer is ambiguous among the objects:
from image + question alone, the best guess is right with probability 1/2 (two objects) or 1/3.

After round 1, a round is a history round with probability ``HISTORY_SHARE`` when one may follow
(48.5% of all rounds in the default train split), else an image round of a uniform type. The ground-truth phrasing is fixed
by the question type (above); the vocabulary (``ANSWERS``) also holds paraphrases of every value
(``red``, ``it is red``, ``a red one`` ...), all with relevance 1.0 for a round whose true value they
state. Candidates: the ground truth, every other answer of its form (``RIVALS``: for ``it is red`` the
five other ``it is {colour}``, for ``yes it is`` ``no it is not``), then distinct other vocabulary strings
(uniform) up to ``K``, shuffled (the ground truth at a uniform position). So the presence of a value's
phrasing never gives the answer away: with ``K - 1`` strings drawn uniformly from the other 143, a
rival phrasing is missing from 31% of the rounds, and a model without the history then knows the referent
is the object whose phrasing is there (measured before this rule: R@1 0.48-0.49 on history rounds
without the history, above the 0.45 that guessing among the scene's objects gives).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfuse.data.shapes.scene import COLORS, SHAPES
from mmfuse.data.shapes_dialog.scenes import DialogScene

KIND_NAMES = ("image", "history")
IMAGE, HISTORY = 0, 1
CAPTION = "a picture of some coloured shapes"
HISTORY_SHARE = 0.65
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
IMAGE_TYPES = ("color_of_shape", "shape_of_color", "exists_object", "exists_shape", "exists_color", "count")
HISTORY_TYPES = ("color_it", "shape_it", "is_it_color", "is_it_shape", "what_it")
FIRST_TYPES = ("color_of_shape", "shape_of_color")


def _vocabulary() -> list[tuple[str, str, str]]:
    """(answer text, the value it states, its form); texts are distinct. A form is a phrasing with the
    value left open (``it is {colour}``; ``yes it is`` / ``no it is not`` share one)."""
    out: list[tuple[str, str, str]] = []
    for c in COLORS:
        out += [(t, f"color:{c}", f"color:{k}") for k, t in
                enumerate((c, f"it is {c}", f"it's {c}", f"a {c} one", f"the {c} one"))]
    for s in SHAPES:
        out += [(t, f"shape:{s}", f"shape:{k}") for k, t in
                enumerate((s, f"a {s}", f"it is a {s}", f"it's a {s}", f"the {s}"))]
    out += [(t, "yes", f"yesno:{k}") for k, t in enumerate(("yes", "yes it is", "yes there is", "yeah", "yep"))]
    out += [(t, "no", f"yesno:{k}") for k, t in enumerate(("no", "no it is not", "no there is not", "nope",
                                                           "no it isn't"))]
    for n in (2, 3):
        w = COUNT_WORDS[n]
        out += [(t, f"count:{n}", f"count:{k}") for k, t in
                enumerate((w, str(n), f"there are {w}", f"{w} objects", f"{w} shapes"))]
    out += [("one", "count:1", "count:0"), ("four", "count:4", "count:0")]  # never true (2 or 3 objects)
    for c in COLORS:
        for s in SHAPES:
            out += [(t, f"object:{c} {s}", f"object:{k}") for k, t in
                    enumerate((f"{c} {s}", f"a {c} {s}", f"it is a {c} {s}"))]
    return out


ANSWERS, VALUES, FORMS = (tuple(column) for column in zip(*_vocabulary(), strict=True))
ANSWER_INDEX = {t: i for i, t in enumerate(ANSWERS)}
RIVALS: tuple[tuple[int, ...], ...] = tuple(
    tuple(j for j, f in enumerate(FORMS) if f == FORMS[i] and j != i) for i in range(len(ANSWERS)))
OTHERS: tuple[np.ndarray, ...] = tuple(  # per answer: the strings that are neither it nor a rival
    np.setdiff1d(np.arange(len(ANSWERS)), [i, *RIVALS[i]]) for i in range(len(ANSWERS)))


@dataclass(frozen=True)
class Round:
    question: str
    answer: str      # the ground truth, one of ANSWERS
    kind: int        # IMAGE or HISTORY
    qtype: str
    referent: int    # the object the round is about (named, or "it"); -1: none (count, "no" answers)
    value: str       # what the answer states (VALUES)


def _yes_no(yes: bool, there: bool) -> tuple[str, str]:
    if there:
        return ("yes there is", "yes") if yes else ("no there is not", "no")
    return ("yes it is", "yes") if yes else ("no it is not", "no")


def ask(qtype: str, scene: DialogScene, referent: int, rng: np.random.Generator) -> Round:
    """One round of type ``qtype``; ``referent``: the object "it" means (history types only)."""
    objs = scene.objects
    if qtype in HISTORY_TYPES:
        o = objs[referent]
        if qtype == "color_it":
            return Round("what colour is it?", f"it is {o.color}", HISTORY, qtype, referent, f"color:{o.color}")
        if qtype == "shape_it":
            return Round("what shape is it?", f"it is a {o.shape}", HISTORY, qtype, referent, f"shape:{o.shape}")
        if qtype == "what_it":
            return Round("what is it?", f"a {o.color} {o.shape}", HISTORY, qtype, referent, f"object:{o.color} {o.shape}")
        yes = bool(rng.random() < 0.5)
        others = [i for i in range(len(objs)) if i != referent]
        asked = objs[referent] if yes else objs[others[int(rng.integers(len(others)))]]
        answer, value = _yes_no(yes, there=False)
        if qtype == "is_it_color":
            return Round(f"is it {asked.color}?", answer, HISTORY, qtype, referent, value)
        return Round(f"is it a {asked.shape}?", answer, HISTORY, qtype, referent, value)
    if qtype == "count":
        n = len(objs)
        return Round("how many objects are there?", COUNT_WORDS[n], IMAGE, qtype, -1, f"count:{n}")
    if qtype in ("color_of_shape", "shape_of_color"):
        i = int(rng.integers(len(objs)))
        o = objs[i]
        if qtype == "color_of_shape":
            return Round(f"what colour is the {o.shape}?", o.color, IMAGE, qtype, i, f"color:{o.color}")
        return Round(f"what shape is the {o.color} object?", f"a {o.shape}", IMAGE, qtype, i, f"shape:{o.shape}")
    yes = bool(rng.random() < 0.5)
    if qtype == "exists_object":
        answer, value = _yes_no(yes, there=True)
    else:
        answer, value = ("yes", "yes") if yes else ("no", "no")
    if yes:
        i = int(rng.integers(len(objs)))
        c, s = objs[i].color, objs[i].shape
    else:
        i = -1
        if qtype == "exists_object":
            absent = [(c, s) for c in COLORS for s in SHAPES if not any(o.color == c and o.shape == s for o in objs)]
            c, s = absent[int(rng.integers(len(absent)))]
        elif qtype == "exists_shape":
            absent_s = [s for s in SHAPES if all(o.shape != s for o in objs)]
            c, s = "", absent_s[int(rng.integers(len(absent_s)))]
        else:
            absent_c = [c for c in COLORS if all(o.color != c for o in objs)]
            c, s = absent_c[int(rng.integers(len(absent_c)))], ""
    question = {"exists_object": f"is there a {c} {s}?", "exists_shape": f"is there a {s}?",
                "exists_color": f"is there a {c} object?"}[qtype]
    return Round(question, answer, IMAGE, qtype, i, value)


def plan_dialog(scene: DialogScene, rounds: int, rng: np.random.Generator) -> list[Round]:
    """``rounds`` rounds about ``scene`` (the module docstring's rules)."""
    out: list[Round] = []
    named = -1  # the object the most recent naming round named
    for r in range(rounds):
        if r == 0:
            qtype = FIRST_TYPES[int(rng.integers(len(FIRST_TYPES)))]
        elif out[-1].referent >= 0 and rng.random() < HISTORY_SHARE:
            qtype = HISTORY_TYPES[int(rng.integers(len(HISTORY_TYPES)))]
        else:
            qtype = IMAGE_TYPES[int(rng.integers(len(IMAGE_TYPES)))]
        one = ask(qtype, scene, named, rng)
        if one.kind == IMAGE and one.referent >= 0:
            named = one.referent
        out.append(one)
    return out


def make_options(answers: list[str], num_options: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``[N, K]`` (indices into ``ANSWERS``) and the ground truth's position ``[N]``: the
    ground truth, every other answer of its form (``RIVALS``: ``it is red`` brings ``it is blue`` ...
    ``it is white``, ``yes it is`` brings ``no it is not``), then distinct other strings drawn uniformly,
    shuffled: which values are among the candidates never tells the answer. With fewer than
    ``1 + rivals`` candidates the rivals are drawn among."""
    gts = np.array([ANSWER_INDEX[a] for a in answers], dtype=np.int64)
    options = np.empty((len(answers), num_options), dtype=np.int32)
    for r, gt in enumerate(gts.tolist()):
        rivals = np.array(RIVALS[gt], dtype=np.int64)
        if len(rivals) >= num_options - 1:
            picked = rng.permutation(rivals)[: num_options - 1]
        else:
            picked = np.concatenate([rivals, rng.permutation(OTHERS[gt])[: num_options - 1 - len(rivals)]])
        options[r] = rng.permutation(np.append(picked, gt))
    return options, np.argmax(options == gts[:, None], axis=1).astype(np.int64)
