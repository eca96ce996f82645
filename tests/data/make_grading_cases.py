"""Writes grading_cases.jsonl: the case table of docs/grading.md, one row per response, its gold,
the verdict a careful grader gives and why. Edit the rows here and run it again:

    python tests/data/make_grading_cases.py
"""

import collections
import json
from pathlib import Path

rows = []


def add(cat, response, gold, verdict, why, fmt="strict"):
    rows.append({"category": cat, "response": response, "gold": gold, "right": verdict, "why": why, "format": fmt})

# 1. exact numbers
big = "123456789012345678901234567890"
add("numbers", f"\\boxed{{{big}}}", big, True, "the same 30-digit integer")
add("numbers", f"\\boxed{{{big[:-1]}1}}", big, False, "30-digit integers differing in the last digit")
add("numbers", "\\boxed{9007199254740993}", "9007199254740992", False, "2^53+1 is not 2^53 (floats would say equal)")
add("numbers", "\\boxed{9007199254740992}", "9007199254740992", True, "2^53 itself")
add("numbers", "\\boxed{" + "7" * 400 + "}", "7" * 399 + "8", False, "two 400-digit numbers (floats overflow to inf)")
add("numbers", "\\boxed{" + "7" * 400 + "}", "7" * 400, True, "the same 400-digit number")
for value, written, why in [("0.5", "\\frac{1}{2}", "a fraction of the same value"), ("0.5", "1/2", "a slash fraction"),
                            ("0.5", "\\dfrac{1}{2}", "dfrac"), ("0.5", "\\tfrac12", "tfrac without braces"),
                            ("0.5", "50\\%", "a percent of the same value"), ("50\\%", "0.5", "the decimal of a percent"),
                            ("50\\%", "50", "a percent without its sign"), ("0.25", "\\frac{2}{8}", "an unreduced fraction"),
                            ("2.5", "2.50", "a trailing zero"), ("2.5", "5/2", "an improper fraction"),
                            ("-3", "-3", "a negative integer"), ("-3", "−3", "the Unicode minus"),
                            ("1000", "1,000", "a thousands comma"), ("1000", "1\\,000", "a LaTeX thin space"),
                            ("1000", "1{,}000", "a braced comma"), ("1000000", "1,000,000", "two thousands commas"),
                            ("1000", "1000.0", "a decimal point and zero"), ("1500", "1.5e3", "scientific notation"),
                            ("0.001", "1e-3", "a negative exponent"), ("3", "+3", "an explicit plus"),
                            ("0.5", ".5", "no leading zero"), ("12", "012", "a leading zero")]:
    add("numbers", f"\\boxed{{{written}}}", value, True, why)
for value, written, why in [("0.5", "0.6", "a different decimal"), ("1/3", "0.333333", "a rounded decimal is not the fraction"),
                            ("0.5", "\\frac{1}{3}", "a different fraction"), ("1000", "100", "a dropped zero"),
                            ("1000", "1,00", "a misplaced comma"), ("-3", "3", "the sign matters"), ("3", "-3", "the sign matters"),
                            ("12", "21", "swapped digits"), ("0.5", "5", "a missing decimal point"), ("50\\%", "5", "a different number"),
                            ("2.5", "2.05", "a different decimal"), ("1500", "1.5e4", "a different exponent")]:
    add("numbers", f"\\boxed{{{written}}}", value, False, why)

# 2. units
for gold, written, verdict, why in [
    ("5 g", "5 kg", False, "a different unit"), ("5 g", "5 g", True, "the same unit"), ("5 g", "5 grams", True, "the unit spelled out"),
    ("5 kg", "5\\text{ kg}", True, "a unit in \\text"), ("5 kg", "5\\,\\mathrm{kg}", True, "a unit in \\mathrm after a thin space"),
    ("5", "5 kg", True, "a unit on a bare gold"), ("5 kg", "5", True, "a bare number for a gold with a unit"),
    ("5 kg", "6 kg", False, "a different value, same unit"), ("5 kg", "5000 g", False, "the same mass in another unit is not converted"),
    ("12 cm", "12 centimetres", True, "British spelling of the unit"), ("12 cm", "12 m", False, "another unit"),
    ("3 h", "3 hours", True, "hours spelled out"), ("3 h", "3 min", False, "minutes are not hours"),
    ("2 l", "2 litres", True, "litres spelled out"), ("\\$12", "12 dollars", True, "dollars written as a word"),
    ("\\$12", "\\$12", True, "the same amount"), ("\\$12", "\\$13", False, "another amount"),
    ("30", "30°", True, "a degree sign on a bare gold"), ("30^\\circ", "30°", True, "the degree sign and ^\\circ"),
    ("30^\\circ", "30 degrees", True, "degrees spelled out"), ("30^\\circ", "30^{\\circ}", True, "braced circ"),
    ("30^\\circ", "60^\\circ", False, "another angle"), ("3", "3 apples", True, "a counted noun on a bare gold"),
    ("3 apples", "3 pears", False, "a different thing counted"), ("4 m^2", "4 m²", True, "a squared unit in Unicode"),
    ("7", "7 kg", True, "a unit on a bare gold"), ("7 kg", "7 g", False, "kg is not g"),
    ("7", "7kg", True, "a known unit written on the number"), ("5", "5purple", False, "junk on the number is no unit"),
    ("5", "5ge", False, "junk on the number is no unit"), ("3", "3apples", False, "an unknown word on the number"),
]:
    add("units", f"\\boxed{{{written}}}", gold, verdict, why)

# 3. equations
for gold, written, verdict, why in [
    ("3", "x = 3", True, "the value of the variable"), ("3", "3=x", True, "the variable on the right"),
    ("4", "3 = 4", False, "an equation of two values is not the right-hand side"), ("3", "x=4", False, "a wrong value"),
    ("3", "y=3", True, "another variable name"), ("\\pm 3", "x=3", False, "one root is not both"),
    ("x=3", "x=3", True, "the same equation"), ("5", "n = 5", True, "n = 5"), ("5", "\\theta = 5", True, "a Greek variable"),
    ("2", "x_1 = 2", True, "a subscripted variable"), ("2", "2 = 2", False, "an equation of two values is no value"),
]:
    add("equations", f"\\boxed{{{written}}}", gold, verdict, why)

# 4. delimiters and surroundings
for response, why in [
    ("$\\boxed{3}$", "inline math delimiters"), ("\\[\n\\boxed{3}\n\\]", "display math, Qwen2.5's style"),
    ("$$\\boxed{3}$$", "double dollars"), ("**\\boxed{3}**", "markdown bold"), ("\\boxed{3}。", "a full-width full stop"),
    ("\\boxed{3}!", "an exclamation mark"), ("\\boxed{3} apples.", "words after the box"),
    ("The answer is \\boxed{3}, since two plus one is three.", "reasoning after the box"),
    ("\\boxed{$3$}", "dollars inside the box"), ("\\boxed{ 3 }", "spaces inside the box"), ("\\boxed{3.}", "a full stop inside the box"),
    ("\\boxed{**3**}", "bold inside the box"), ("\\boxed {3}", "a space before the brace"), ("\\fbox{3}", "\\fbox"),
    ("So the final answer is:\n\n\\[\n\\boxed{3}\n\\]\n", "Qwen2.5-VL's closing lines"),
    ("\\(\\boxed{3}\\)", "inline parentheses delimiters"), ("`\\boxed{3}`", "backticks"),
    ("\\boxed{3}\n\nI hope this helps!", "a closing remark"), ("\\boxed{\\text{3}}", "a number in \\text"),
    ("\\boxed{\\mathbf{3}}", "a bold number"),
]:
    add("delimiters", response, "3", True, why)
for response, why in [("$\\boxed{4}$", "a wrong answer in math delimiters"), ("\\[\n\\boxed{4}\n\\]", "a wrong answer displayed"),
                      ("**\\boxed{4}**", "a wrong answer in bold"), ("\\boxed{4} apples.", "a wrong count of apples"),
                      ("The answer is \\boxed{4}, not 3.", "the box decides, not the text after it")]:
    add("delimiters", response, "3", False, why)
for tok in ["<|im_end|>", "</s>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "<end_of_turn>"]:
    add("end tokens", f"\\boxed{{3}}{tok}", "3", True, f"{tok} after the box")
    add("end tokens", f"\\boxed{{4}}{tok}", "3", False, f"a wrong answer with {tok}")
    add("end tokens", f"The count is \\boxed{{3}}.{tok}", "3", True, f"a sentence then {tok}")

# 5. several boxes, stuffing, hedges, think
add("boxes", "\\boxed{3} so again \\boxed{3}", "3", True, "the same answer boxed twice")
add("boxes", "\\boxed{3} or \\boxed{4}", "3", False, "two different answers: a hedge")
add("boxes", "\\boxed{4} or \\boxed{3}", "3", False, "a hedge with the right one last")
add("boxes", "\\boxed{1111\\boxed{1.\\boxed{2}", "2", False, "stuffing, unbalanced")
add("boxes", "\\boxed{1111\\boxed{1.\\boxed{2}}}}", "2", False, "stuffing, balanced boxes in boxes")
add("boxes", "\\boxed{3", "3", False, "an unclosed box")
add("boxes", "\\boxed{}", "3", False, "an empty box")
add("boxes", "3", "3", False, "no box at all")
add("boxes", "The answer is 3.", "3", False, "no box at all")
add("boxes", "\\boxed{3} \\boxed{3.} \\boxed{$3$}", "3", True, "three boxes that agree once cleaned")
add("boxes", "\\boxed{\\frac{1}{2}} and \\boxed{0.5}", "0.5", False, "two boxes written differently are two answers")
add("boxes", "<think>maybe \\boxed{4}</think> \\boxed{3}", "3", True, "a box in the thinking does not compete")
add("boxes", "<think>surely \\boxed{3}</think> \\boxed{4}", "3", False, "the final box, not the thinking's")
add("boxes", "<think>it is \\boxed{3}</think>", "3", False, "a box only in the thinking is no answer")
add("boxes", "<think>unfinished \\boxed{3}", "3", False, "an unclosed think block hides its box")
add("boxes", "\\box{3}", "3", False, "\\box is a verdict's, not an answer's")
for i in range(10):
    add("boxes", "\\boxed{%d} wait no \\boxed{%d}" % (i, i + 1), str(i + 1), False, "a changed mind is a hedge in strict")
    add("boxes", "\\boxed{%d} wait no \\boxed{%d}" % (i, i + 1), str(i + 1), True, "last_box reads the last box", "last_box")
add("boxes", "\\boxed{3}" + " and more" * 60, "3", False, "last_box allows 300 characters after the box", "last_box")
add("boxes", "\\boxed{3} and then some words", "3", True, "last_box with short text after", "last_box")
add("boxes", "\\boxed{1111\\boxed{1.\\boxed{2}", "2", False, "stuffing has no answer under last_box too", "last_box")

# 6. multiple choice
for written, verdict, why in [
    ("(B)", True, "the letter in parentheses"), ("B)", True, "a closing parenthesis"), ("B", True, "the bare letter"),
    ("B. 12", True, "the letter and its option text"), ("(B) 12", True, "parentheses and option text"), ("B: 12", True, "a colon"),
    ("Option B", True, "the word option"), ("\\text{(B)}", True, "in \\text"), ("\\mathbf{B}", True, "in \\mathbf"),
    ("(C)", False, "another letter"), ("C. 12", False, "a wrong letter with the right option text"),
    ("(B) or (C)", False, "two letters: a hedge"), ("B and C", False, "two letters"), ("12", False, "the option text alone"),
    ("b", True, "a lower-case letter"), ("**B**", True, "bold letter"), ("Choice B", True, "the word choice"),
    ("(A)", False, "another letter"), ("D", False, "another letter"), ("B, C", False, "a list of letters"),
]:
    for gold in ["B", "(B)", "\\boxed{B}"]:
        add("choices", f"\\boxed{{{written}}}", gold, verdict, why + f" (gold {gold})")

# 7. golds stored boxed or in dollars
for gold, written, verdict, why in [("\\boxed{3}", "3", True, "a boxed gold"), ("$3$", "3", True, "a gold in dollars"),
                                    ("\\boxed{3}", "4", False, "a boxed gold, wrong answer"), ("$\\frac{1}{2}$", "0.5", True, "a gold fraction in dollars"),
                                    ("\\boxed{red}", "red", True, "a boxed word gold")]:
    add("golds", f"\\boxed{{{written}}}", gold, verdict, why)

# 8. Unicode
for gold, written, verdict, why in [
    ("\\frac{1}{2}", "½", True, "the vulgar fraction"), ("0.5", "½", True, "the vulgar fraction as a decimal"),
    ("\\pi", "π", True, "pi as a symbol"), ("2\\pi", "2π", True, "a multiple of pi"), ("\\sqrt{2}", "√2", True, "the root sign"),
    ("\\sqrt{3}", "√2", False, "another root"), ("\\infty", "∞", True, "the infinity sign"), ("\\alpha", "α", True, "a Greek letter"),
    ("x^2", "x²", True, "a superscript two"), ("x^3", "x²", False, "another power"), ("3", "３", True, "a full-width digit"),
    ("red", "ｒｅｄ", True, "full-width letters"), ("3", "3\u200b", True, "a zero-width space"), ("red", "re\u200bd", True, "a zero-width space inside"),
    ("café", "cafe\u0301", True, "NFD against NFC accents"), ("-2", "−2", True, "the minus sign"), ("\\frac{3}{4}", "¾", True, "three quarters"),
    ("\\frac{1}{4}", "½", False, "another vulgar fraction"), ("2\\pi", "π", False, "pi is not 2 pi"), ("\\pi", "3.14", False, "a rounded pi"),
]:
    add("unicode", f"\\boxed{{{written}}}", gold, verdict, why)

# 9. text
for gold, written, verdict, why in [
    ("red", "Red", True, "case"), ("red", "RED", True, "upper case"), ("red", "\"red\"", True, "double quotes"), ("red", "'red'", True, "single quotes"),
    ("red", "red!", True, "an exclamation mark"), ("red", "red.", True, "a full stop"), ("red", "\\text{red}", True, "\\text"),
    ("red", "\\textbf{red}", True, "\\textbf"), ("grey", "gray", True, "American spelling"), ("gray", "grey", True, "British spelling"),
    ("red", "blue", False, "another colour"), ("red", "der", False, "the same letters, another word (sympy would multiply)"),
    ("left", "Left", True, "case"), ("left", "right", False, "the other side"), ("red", "reddish", False, "another word"),
    ("red", "dark red", False, "more than the answer"), ("blue", "“blue”", True, "curly quotes"), ("blue", "blue;", True, "a semicolon"),
    ("yes", "Yes", True, "case"), ("red", "", False, "nothing"), ("light blue", "Light  Blue", True, "case and double space"),
    ("orange", "orange colour", False, "a noun after the word"), ("purple", "violet", False, "a near colour"),
]:
    add("text", f"\\boxed{{{written}}}", gold, verdict, why)

# 10. maths: intervals, sets, inequalities, expressions
for gold, written, verdict, why in [
    ("(0,1)", "0<x<1", True, "an inequality for its interval"), ("[0,1)", "0\\le x<1", True, "a half-open interval"),
    ("(0,1)", "0\\le x\\le 1", False, "a closed interval is not the open one"), ("(2,\\infty)", "x>2", True, "a one-sided inequality"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True, "a set in another order"), ("\\{1,2,3\\}", "\\{1,2\\}", False, "a smaller set"),
    ("\\varnothing", "\\emptyset", True, "the two empty-set symbols"), ("\\emptyset", "∅", True, "the empty-set sign"),
    ("x+1", "1+x", True, "a commuted sum"), ("2x+2", "2(x+1)", True, "a factored form"), ("x^2-1", "(x-1)(x+1)", True, "a factored difference"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True, "a rationalised denominator"), ("x+1", "x+2", False, "another expression"),
    ("2^{10}", "1024", True, "a power evaluated"), ("2^{53}+1", "9007199254740993", True, "an exact evaluation"),
    ("2^{53}+1", "9007199254740992", False, "an evaluation off by one"), ("\\sqrt{8}", "2\\sqrt{2}", True, "a simplified root"),
    ("\\frac{\\pi}{2}", "\\pi/2", True, "a slash for a fraction"), ("(1,2)", "(2,1)", False, "a point is ordered"),
    ("3\\sqrt{2}", "\\sqrt{18}", True, "a root of 18"),
]:
    add("maths", f"\\boxed{{{written}}}", gold, verdict, why)

# 11. the built-in tasks
for colour in ["red", "green", "blue", "yellow", "purple", "orange", "black", "pink"]:
    add("built-in", f"\\boxed{{{colour}}}", colour, True, "the built-in colour")
    add("built-in", f"\\boxed{{{colour.capitalize()}}}.", colour, True, "capitalised, with a full stop")
    other = "blue" if colour != "blue" else "red"
    add("built-in", f"\\boxed{{{other}}}", colour, False, "another colour")
for n in range(1, 10):
    add("built-in", f"\\boxed{{{n}}}", str(n), True, "a count")
    add("built-in", f"\\boxed{{{n + 1}}}", str(n), False, "a wrong count")
    add("built-in", f"There are \\boxed{{{n}}} circles.", str(n), True, "a count in a sentence")

print(len(rows), "rows:", dict(collections.Counter(r["category"] for r in rows)))
with open(Path(__file__).with_name("grading_cases.jsonl"), "w") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
