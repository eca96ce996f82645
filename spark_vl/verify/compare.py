"""Whether an extracted answer is the ground truth (docs/grading.md has the cases and verdicts).

`equivalent(predicted, gold)` decides what it can without sympy, exactly: numbers as fractions
(never floats: two 30-digit integers that differ in the last digit differ), with their units;
multiple-choice letters; text up to case, quotes, Unicode forms and spelling variants. What only
symbolic maths can tell (expressions, intervals, sets) it returns as undecided (None), with both
sides rewritten as LaTeX that math-verify reads (`latex_for_math_verify`), for a grading worker.
"""

from __future__ import annotations

import re
from fractions import Fraction

from spark_vl.verify.extract import clean

_MATHY = re.compile(r"[0-9\\^_/+\-*=()\[\]{}<>]")
_CHOICE = re.compile(r"^\(?([A-J])\)?$")
_CHOICE_WITH_TEXT = re.compile(r"^(?:option|choice|answer)?\s*\(?([A-J])\)?(?:[.:)]\s*|\s+).+$", re.IGNORECASE)
_OPTION_WORD = re.compile(r"^(?:option|choice|answer)\s*\(?([A-J])\)?$", re.IGNORECASE)
_LETTERS = re.compile(r"\(([A-J])\)|\b([A-J])\b")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")  # a word, not a LaTeX command or a variable
_VARIABLE = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?$")
_NUMBER = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?$")
_FRACTION = re.compile(r"^([+-]?)\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}$|^([+-]?)\\[dt]?frac(\d)(\d)$")
_SLASH = re.compile(r"^([+-]?[\d.]+)\s*/\s*([\d.]+)$")
_THOUSANDS = re.compile(r"(?<=\d)(?:,|\\,|\{,\}|\\ |\u2009|\u202f)(?=\d{3}(?:\D|$))")
_QUANTITY = re.compile(r"^(?P<currency>\\?\$)?\s*(?P<number>[+-]?[\d.,]+(?:[eE][+-]?\d+)?(?:/[\d.]+)?"
                       r"|[+-]?\\[dt]?frac\{[^{}]+\}\{[^{}]+\})(?P<unit>.*)$")

# Spellings of one unit; a unit not named here is compared as written (lower case, singular).
UNITS = {
    "%": ("%", "\\%", "percent", "per cent", "pct"),
    "deg": ("°", "^\\circ", "^{\\circ}", "\\circ", "deg", "degree", "degrees"),
    "kg": ("kg", "kilogram", "kilograms", "kilo", "kilos"), "g": ("g", "gram", "grams", "gramme", "grammes"),
    "mg": ("mg", "milligram", "milligrams"), "t": ("t", "tonne", "tonnes", "ton", "tons"),
    "km": ("km", "kilometer", "kilometers", "kilometre", "kilometres"),
    "m": ("m", "meter", "meters", "metre", "metres"), "cm": ("cm", "centimeter", "centimeters", "centimetre",
                                                             "centimetres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "s": ("s", "sec", "secs", "second", "seconds"), "min": ("min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"), "day": ("day", "days"),
    "l": ("l", "liter", "liters", "litre", "litres"), "ml": ("ml", "milliliter", "milliliters", "millilitre",
                                                              "millilitres"),
    "$": ("$", "\\$", "dollar", "dollars", "usd"), "cent": ("cent", "cents", "¢"),
    "m^2": ("m^2", "m^{2}", "m²", "square meters", "square metres", "sq m"),
    "cm^2": ("cm^2", "cm^{2}", "cm²", "square centimeters", "square centimetres"),
}
_UNIT_OF = {spelling: unit for unit, spellings in UNITS.items() for spelling in spellings}
# Words the built-in tasks (and English) spell two ways.
SPELLINGS = {"gray": "grey", "color": "colour", "colors": "colours", "centre": "center", "favourite": "favorite"}
_UNICODE_LATEX = {"π": "\\pi", "∞": "\\infty", "α": "\\alpha", "β": "\\beta", "γ": "\\gamma", "θ": "\\theta",
                  "λ": "\\lambda", "μ": "\\mu", "σ": "\\sigma", "φ": "\\phi", "ω": "\\omega", "Δ": "\\Delta",
                  "−": "-", "–": "-", "×": "\\times", "·": "\\cdot", "÷": "\\div", "≤": "\\le", "≥": "\\ge",
                  "≠": "\\neq", "∅": "\\emptyset", "∪": "\\cup", "∩": "\\cap", "±": "\\pm", "°": "^\\circ"}


def equivalent(predicted: str, gold: str) -> bool | None:
    """Whether `predicted` (an extracted answer) is `gold`: True or False when decided here, None
    when only math-verify can tell (then `latex_for_math_verify` gives both sides)."""
    pred, want = unicode_text(clean(predicted)), unicode_text(clean(gold_answer(gold)))
    want_letter = choice_letter(want)
    if not pred:
        return False
    if words(pred) == words(want):
        return True
    if want_letter is not None:  # multiple choice: the letter decides, whatever option text follows it
        return choice_letter(pred, lower_case=True) == want_letter
    if "=" not in want:
        value = equation_value(pred)
        if value is None:
            return False  # "3 = 4": no single value
        pred = value
    mine, theirs = quantity(pred), quantity(want)
    if mine is not None and theirs is not None:
        return same_quantity(mine, theirs)
    if set(_WORD.findall(pred)) - set(_WORD.findall(want)):
        return False  # "3apples", "5purple": words math-verify would drop, not maths
    return None if _MATHY.search(pred) and _MATHY.search(want) else False


def gold_answer(gold: str) -> str:
    """A ground truth stored boxed (`\\boxed{B}`) as what the box holds."""
    match = re.fullmatch(r"\s*\\boxed\s*\{(.*)\}\s*", gold, re.DOTALL)
    return match.group(1) if match else gold


def unicode_text(text: str) -> str:
    """`clean`ed text with Unicode math written as LaTeX (π, √2, x², ½, ∞, −, ≤, ∅)."""
    text = re.sub(r"√\s*\(([^()]*)\)|√\s*(\w+)", lambda m: f"\\sqrt{{{m.group(1) or m.group(2)}}}", text)
    for symbol, latex in _UNICODE_LATEX.items():
        text = text.replace(symbol, latex)
    return text.replace("\\varnothing", "\\emptyset").replace("\\left", "").replace("\\right", "")


def words(text: str) -> str:
    """Text as a person compares it: case, spaces, inner quotes and spelling variants do not
    matter."""
    tokens = re.sub(r"[\"'`]", "", text).lower().split()
    return " ".join(SPELLINGS.get(token, token) for token in tokens)


def choice_letter(text: str, lower_case: bool = False) -> str | None:
    """The option letter an answer picks ((B), B), B. 12, (B) 12, B: 12, Option B, \\text{(B)},
    \\mathbf{B}; with `lower_case`, also (b) or b alone); None when it names none or more than one
    (a hedge)."""
    text = re.sub(r"\\(?:text|textbf|mathbf|mathrm)\s*\{([^{}]*)\}", r"\1", clean(text)).strip()
    if lower_case and re.fullmatch(r"\(?[a-j]\)?", text):
        text = text.upper()
    for pattern in (_CHOICE, _OPTION_WORD, _CHOICE_WITH_TEXT):
        if match := pattern.match(text):
            rest = text[match.end(1):]
            if pattern is _CHOICE_WITH_TEXT and _LETTERS.search(rest.replace("(" + match.group(1) + ")", "")):
                others = {a or b for a, b in _LETTERS.findall(rest)}
                if others - {match.group(1)} and re.search(r"\b(?:and|or)\b|,", rest):
                    return None  # "(B) and (C)": two letters
            return match.group(1).upper()
    return None


def equation_value(text: str) -> str | None:
    """An answer written as an equation with a variable on one side (`x = 3`, `3=x`) as the value
    on the other; the text itself without `=`; None for an equation of two values (`3 = 4`)."""
    if text.count("=") != 1 or any(op in text for op in ("\\le", "\\ge", "<", ">")):
        return text
    left, right = (side.strip() for side in text.split("="))
    if _VARIABLE.match(left) and not _VARIABLE.match(right):
        return right
    if _VARIABLE.match(right) and not _VARIABLE.match(left):
        return left
    return None if quantity(left) is not None and quantity(right) is not None else text


def number(text: str) -> Fraction | None:
    """An exact number: an integer or decimal (thousands separated by commas or thin spaces,
    scientific notation), a fraction (a/b, \\frac{a}{b}); None for anything else."""
    text = _THOUSANDS.sub("", text.replace("\\!", "").strip()).replace(" ", "")
    if match := _NUMBER.match(text):
        sign, digits, exponent = match.groups()
        value = Fraction(digits) * Fraction(10) ** int(exponent or 0)
        return -value if sign == "-" else value
    if match := _FRACTION.match(text):
        sign = match.group(1) or match.group(4) or ""
        top, bottom = (number(match.group(2)), number(match.group(3))) if match.group(2) else (
            Fraction(match.group(5)), Fraction(match.group(6)))
    elif match := _SLASH.match(text):
        sign, top, bottom = "", number(match.group(1)), number(match.group(2))
    else:
        return None
    if top is None or not bottom:
        return None
    return -(top / bottom) if sign == "-" else top / bottom


def quantity(text: str) -> tuple[Fraction, str] | None:
    """(value, unit) of a number with an optional unit (`5 kg`, `30°`, `50\\%`, `$12`); the unit is
    named as in `UNITS` or, unknown, as written; '' without one. None when `text` is no number."""
    text = re.sub(r"\\(?:text|mathrm|textrm|mbox)\s*\{([^{}]*)\}", r" \1", text)
    text = _THOUSANDS.sub("", text).replace("\\,", " ").replace("\\ ", " ").strip()
    plain = number(text)
    if plain is not None:
        return plain, ""
    match = _QUANTITY.match(text)
    if match is None:
        return None
    value = number(match.group("number"))
    if value is None:
        return None
    spaced = match.group("unit")[:1].isspace()
    unit = match.group("unit").strip().lower().strip(".")
    if match.group("currency"):
        if unit:
            return None
        unit = "$"
    known = _UNIT_OF.get(unit, _UNIT_OF.get(unit.rstrip("s")))
    if known is None and unit and not (spaced and re.fullmatch(r"[a-z][a-z ]*", unit)):
        return None  # "5 + x", "2^{10}", "3 4", "2 and 3", "5purple": an expression, a list or junk, no unit
    return value, known or (unit.rstrip("s") if len(unit) > 3 else unit)


def same_quantity(predicted: tuple[Fraction, str], gold: tuple[Fraction, str]) -> bool:
    """Equal values in compatible units: the same unit, or one side without one. A percent is its
    value over 100 too (50% is 0.5) and a bare number may stand for a percent (50 for 50%)."""
    (value, unit), (want, want_unit) = predicted, gold
    if unit and want_unit and unit != want_unit:
        return False
    if value == want:
        return True
    return "%" in (unit, want_unit) and (value / 100 if unit == "%" else value) == (
        want / 100 if want_unit == "%" else want)


def latex_for_math_verify(answer: str) -> str:
    """An answer (or gold) as LaTeX for math-verify: Unicode maths as LaTeX, \\varnothing as
    \\emptyset, a chained inequality `a < x < b` as the interval it is."""
    text = unicode_text(clean(gold_answer(answer)))
    below, above = r"(<|\\leq?|\\lt)", r"(>|\\geq?|\\gt)"
    if match := re.fullmatch(rf"\s*(.+?)\s*{below}\s*[a-zA-Z]\s*{below}\s*(.+?)\s*", text):
        low, op1, op2, high = match.groups()
        return f"{'[' if 'le' in op1 else '('}{low},{high}{']' if 'le' in op2 else ')'}"
    if match := re.fullmatch(rf"\s*[a-zA-Z]\s*{above}\s*(.+?)\s*", text):
        return f"{'[' if 'ge' in match.group(1) else '('}{match.group(2)},\\infty)"
    if match := re.fullmatch(rf"\s*[a-zA-Z]\s*{below}\s*(.+?)\s*", text):
        return f"(-\\infty,{match.group(2)}{']' if 'le' in match.group(1) else ')'}"
    return text
