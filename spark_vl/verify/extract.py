"""Pull the final answer or verdict out of a response, only from a well-formed one.

A response is well-formed when it holds ONE box (`\\boxed{...}` for answers, `\\box{...}` or
`\\boxed{...}` for verdicts), its braces balanced, and nothing after it but spaces and a full
stop; reasoning before it is free. A malformed response has no answer and scores 0: a grader
that read the last box of `\\boxed{1111\\boxed{1.\\boxed{2}` paid for text no person would
accept, and the policy learned to write it.
"""

from __future__ import annotations

import re

_BOX_OPEN = re.compile(r"\\boxed\s*\{|\\box\s*\{")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|mathrm|textbf)\{(.*)\}$")


def box_span(text: str) -> tuple[str, int, int] | None:
    """(the box command, start, end of its content) when `text` is well-formed, else None."""
    opens = list(_BOX_OPEN.finditer(text))
    if len(opens) != 1:
        return None
    match = opens[0]
    depth = 1
    for i in range(match.end(), len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                if text[i + 1:].strip().rstrip(".").strip():
                    return None
                return match.group().rstrip("{ \t\n"), match.end(), i
    return None


def only_box(text: str) -> tuple[str, str] | None:
    """(the box command, its content) when `text` is well-formed (see the module doc), else None."""
    span = box_span(text)
    return None if span is None else (span[0], text[span[1]:span[2]])


def well_formed(response: str) -> bool:
    return only_box(response) is not None


def extract_answer(response: str) -> str | None:
    """The task answer: content of the one \\boxed{...} of a well-formed response, else None."""
    found = only_box(response)
    return found[1] if found and found[0] == "\\boxed" else None


def normalise(answer: str) -> str:
    """Case, spaces, a trailing full stop and a \\text{} wrapper do not matter."""
    text = answer.strip().rstrip(".").strip()
    match = _TEXT_WRAPPER.match(text)
    if match:
        text = match.group(1)
    return "".join(text.lower().split())


def extract_verdict(response: str) -> str | None:
    """A judge's verdict: the one \\box{...} or \\boxed{...} of a well-formed reply, normalised."""
    found = only_box(response)
    return None if found is None else normalise(found[1]).strip("()")
