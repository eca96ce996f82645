"""Pull the final answer or verdict out of a response: the last balanced \\boxed{...} / \\box{...}."""

from __future__ import annotations

import re

_BOX_OPEN = re.compile(r"\\boxed\s*\{|\\box\s*\{")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|mathrm|textbf)\{(.*)\}$")


def last_box(text: str, boxed_only: bool = False) -> str | None:
    """Content of the last \\boxed{...} (or \\box{...} unless boxed_only), braces balanced."""
    found = None
    for match in _BOX_OPEN.finditer(text):
        if boxed_only and not match.group().startswith("\\boxed"):
            continue
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:i]
                    break
    return found


def extract_answer(response: str) -> str | None:
    """The task answer: content of the last \\boxed{...}; None when there is none."""
    return last_box(response, boxed_only=True)


def normalise(answer: str) -> str:
    """Case, spaces, a trailing full stop and a \\text{} wrapper do not matter."""
    text = answer.strip().rstrip(".").strip()
    match = _TEXT_WRAPPER.match(text)
    if match:
        text = match.group(1)
    return "".join(text.lower().split())


def extract_verdict(response: str) -> str | None:
    """A judge's verdict: the last \\box{...} or \\boxed{...}, normalised; None when there is none."""
    content = last_box(response)
    return None if content is None else normalise(content).strip("()")
