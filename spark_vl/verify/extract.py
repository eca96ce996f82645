"""What the answer of a response is (docs/grading.md), and a judge's verdict.

A task answer is what a response puts in `\\boxed{...}`, read by one of two rules
(`reward.answer_format`):

- `strict` (the default): the response's one distinct boxed answer. Math delimiters, markdown,
  punctuation and end-of-turn tokens around the box and text after it do not matter; several
  boxes count when they hold the same answer; a box inside a `<think>` block does not compete
  with the final one. Boxes that differ are a hedge and a box inside a box is stuffing
  (`\\boxed{1111\\boxed{1.\\boxed{2}`, which a last-box grader paid and a policy learned to
  write): neither has an answer.
- `last_box`: the last box, as the field's math graders read it, with at most `TRAILING_LIMIT`
  characters of text after it; stuffing still has no answer.

A judge's verdict is stricter: the one `\\box{...}` or `\\boxed{...}` of a reply with nothing
after it but a full stop, the format the judge templates ask for.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

AnswerFormat = Literal["strict", "last_box"]
TRAILING_LIMIT = 300  # characters of text after the last box that `last_box` accepts

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")  # a task answer's box
_VERDICT_OPEN = re.compile(r"\\boxed\s*\{|\\box\s*\{")  # a judge verdict's box
_TEXT_WRAPPER = re.compile(r"^\\(?:text|mathrm|textbf|mathbf|textit|mathit|operatorname)\{(.*)\}$", re.DOTALL)
_END_TOKENS = re.compile(r"<\|(?:im_end|eot_id|endoftext|end|im_start|eos)\|>|</s>|<end_of_turn>|<eos>")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_DELIMITERS = [("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)"), ("**", "**"), ("__", "__"), ("*", "*"),
               ("`", "`"), ('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb")]
_TRAILING = ".,;:!?\u3002\uff01\uff0c\uff1b\uff1a\uff1f"
# Unicode forms whose compatibility decomposition loses their meaning (x² would read x2, ½ as 1⁄2):
# written as LaTeX before the rest is normalised.
_MEANINGFUL_FORMS = {**{c: f"^{{{d}}}" for c, d in zip("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")},
                     **{c: f"_{{{d}}}" for c, d in zip("₀₁₂₃₄₅₆₇₈₉", "0123456789")},
                     "½": "\\frac{1}{2}", "⅓": "\\frac{1}{3}", "⅔": "\\frac{2}{3}", "¼": "\\frac{1}{4}",
                     "¾": "\\frac{3}{4}", "⅕": "\\frac{1}{5}", "⅛": "\\frac{1}{8}"}


def box_span(text: str) -> tuple[str, int, int] | None:
    """(the box command, start, end of its content) when `text` holds ONE box, braces balanced,
    with nothing after it but spaces and a full stop; else None (the judge reply format)."""
    opens = list(_VERDICT_OPEN.finditer(text))
    if len(opens) != 1:
        return None
    match = opens[0]
    end = _closing_brace(text, match.end())
    if end is None or text[end + 1:].strip().rstrip(".").strip():
        return None
    return match.group().rstrip("{ \t\n"), match.end(), end


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the brace that closes the one opened just before `start`, or None."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _boxes(text: str) -> list[tuple[str, int]] | None:
    """(content, end) of every \\boxed / \\fbox in `text`, in order; None when one is never closed
    or holds another box (stuffing)."""
    found, position = [], 0
    while match := _BOX_OPEN.search(text, position):
        end = _closing_brace(text, match.end())
        if end is None:
            return None
        content = text[match.end():end]
        if _BOX_OPEN.search(content):
            return None
        found.append((content, end))
        position = end + 1
    return found


def visible(response: str) -> str:
    """The response without end-of-turn tokens and `<think>` blocks (an unclosed one hides
    everything after it): what a reader takes the answer from."""
    text = _END_TOKENS.sub("", response)
    text = _THINK.sub("", text)
    return text.split("<think>")[0]


def clean(answer: str) -> str:
    """An answer as written without what does not change it: Unicode compatibility forms (with
    superscripts and vulgar fractions written as LaTeX) and zero-width characters, math delimiters, markdown emphasis, quotes, \\text{}-like wrappers and
    trailing punctuation, repeated until nothing changes."""
    text = "".join(_MEANINGFUL_FORMS.get(c, c) for c in unicodedata.normalize("NFC", answer))
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).strip()
    while True:
        before = text
        text = text.strip().rstrip(_TRAILING).strip()
        for opening, closing in _DELIMITERS:
            if len(text) > len(opening) + len(closing) - 1 and text.startswith(opening) and text.endswith(closing):
                text = text[len(opening):len(text) - len(closing)]
        if match := _TEXT_WRAPPER.match(text):
            text = match.group(1)
        if text == before:
            return text


def final_answer(response: str, answer_format: AnswerFormat = "strict") -> str | None:
    """The response's answer under `answer_format` (module doc), cleaned; None when it has none."""
    text = visible(response)
    boxes = _boxes(text)
    if not boxes:
        return None
    if answer_format == "last_box":
        content, end = boxes[-1]
        return clean(content) if len(text[end + 1:].strip()) <= TRAILING_LIMIT else None
    answers = {clean(content) for content, _ in boxes}
    if len(answers) != 1 or not answers.pop():
        return None
    return clean(boxes[-1][0])


def well_formed(response: str, answer_format: AnswerFormat = "strict") -> bool:
    """Whether the response has an answer under `answer_format`."""
    return final_answer(response, answer_format) is not None


def extract_answer(response: str, answer_format: AnswerFormat = "strict") -> str | None:
    """The task answer (`final_answer`): what recycling shows a judge and reflection quotes."""
    return final_answer(response, answer_format)


def normalise(answer: str) -> str:
    """Case, spaces, a trailing full stop and a \\text{} wrapper do not matter."""
    text = answer.strip().rstrip(".").strip()
    match = _TEXT_WRAPPER.match(text)
    if match:
        text = match.group(1)
    return "".join(text.lower().split())


def extract_verdict(response: str) -> str | None:
    """A judge's verdict: the one \\box{...} or \\boxed{...} of a well-formed reply, normalised."""
    span = box_span(response)
    return None if span is None else normalise(response[span[1]:span[2]]).strip("()")
