"""How the text of each kind of prompt is built (`spark_vl.records.KINDS`): a task sample as a
solve prompt, and the judge and reflection prompts made from the template pools; what an intact
judge reply looks like.

Template pools are JSON files of one shape: the packaged `default` (paraphrases, for real
checkpoints) and `tiny` (one template per pool, for the tiny model), or a file of the user's.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from spark_vl.data import TaskSample
from spark_vl.records import KINDS, PromptRecord, visuals_of

PACKAGED = {"default": "templates.json", "tiny": "templates_tiny.json"}
POSITIVE_LABELS = ("Yes", "A")  # pointwise templates say Yes/No or A/B, the first meaning "correct"


@dataclass(frozen=True)
class Templates:
    pointwise: list[dict]
    pairwise: list[dict]
    reflect_cot: list[str]
    reflect_answer: list[str]
    judge_reply: str
    pairwise_reply: str

    @classmethod
    def load(cls, name: str = "default") -> "Templates":
        """Packaged pools (`default`: paraphrase pools; `tiny`: one template each) or a JSON file
        of the same shape."""
        if name in PACKAGED:
            text = resources.files("spark_vl.prompts").joinpath(PACKAGED[name]).read_text()
        else:
            text = Path(name).read_text()
        data = json.loads(text)
        for template in data["pointwise"] + data["pairwise"]:
            if template["labels"] not in (["Yes", "No"], ["A", "B"]):
                raise ValueError(f"template labels must be [Yes, No] or [A, B], not {template['labels']}")
        return cls(**{k: v for k, v in data.items() if not k.startswith("_")})

    @property
    def yes_no(self) -> dict:
        """The first pointwise template answered Yes/No: the one a model judges its own answers
        with (self-reflection, best-of-n, open-ended rewards)."""
        return next(t for t in self.pointwise if t["labels"] == ["Yes", "No"])

    def pool(self, kind: str) -> list:
        """The templates prompts of `kind` are written with (`KINDS[kind].template`)."""
        return getattr(self, KINDS[kind].template)

    def reply_pattern(self, pairwise: bool) -> re.Pattern:
        """Regex of an intact judge reply; groups: what the image shows, the answer it restates (the
        proposed one; pairwise: option A's), the verdict."""
        reply = self.pairwise_reply if pairwise else self.judge_reply
        return re.compile(r"^\s*" + template_pattern(reply, ("seen", "answer", "verdict")) + r"\s*$", re.DOTALL)


def template_pattern(template: str, groups: tuple[str, ...], skipped: tuple[str, ...] = ()) -> str:
    """Regex source matching `template` once filled: each field in `groups` a lazy group (numbered
    in order of appearance), each in `skipped` matched without a group."""
    pattern = re.escape(template.replace("{{", "{").replace("}}", "}"))
    for names, regex in ((groups, "(.+?)"), (skipped, ".+?")):
        for name in names:
            pattern = pattern.replace(re.escape("{" + name + "}"), regex)
    return pattern


def reply_is_intact(response: str, prompt: PromptRecord, templates: Templates, check: str) -> bool:
    """Whether a judge reply passes `check` beyond its verdict: `format` (the template's reply
    format; without it the text before the verdict degenerates), `restate` (also the proposed
    answer, pairwise option A's, copied exactly: the verdict then compares what the image shows
    with what the reply just wrote), `grounded` (also what the image shows stated as the ground
    truth, which the recycled sample knows) or `verdict` (nothing more)."""
    if check == "verdict":
        return True
    match = templates.reply_pattern(prompt.kind == "judge_pairwise").match(response)
    if match is None:
        return False
    restated = match.group(2).strip() == prompt.proposed[0].strip()
    if check == "grounded":
        return restated and match.group(1).strip() == prompt.answer.strip()
    return check == "format" or restated


@dataclass(frozen=True)
class JudgeClaims:
    """What an intact judge reply claims, each claim checkable on its own: `seen` (the character
    span of what it says the image shows) is the ground truth (`seen_right`); its verdict follows
    from its own words (`consistent`): the positive verdict (Yes, or A) exactly when what it saw is
    the answer it restated (pointwise: the proposed one; pairwise: option A)."""

    seen: tuple[int, int]
    seen_right: bool
    consistent: bool


def judge_claims(reply: str, prompt: PromptRecord, templates: Templates) -> JudgeClaims | None:
    """The claims of a judge reply in its template's reply format; None for any other reply."""
    match = templates.reply_pattern(prompt.kind == "judge_pairwise").match(reply)
    if match is None:
        return None
    seen, restated, verdict = (match.group(i).strip() for i in (1, 2, 3))
    positive, negative = ("Yes", "No") if prompt.label in ("Yes", "No") else ("A", "B")
    return JudgeClaims(match.span(1), seen == prompt.answer.strip(),
                       verdict == (positive if seen == restated else negative))


def solve_prompt(sample: TaskSample, instruction: str, prefix: str = "") -> PromptRecord:
    """A task prompt (`solve_open` without an answer); the instruction is appended unless the
    question already asks for a box."""
    text = sample.question if "\\boxed" in sample.question else f"{sample.question} {instruction}"
    answer = sample.answer if sample.answer is not None else ""
    return PromptRecord(id=f"{prefix}{sample.id}", kind="solve" if sample.answer is not None else "solve_open",
                        images=list(sample.images), text=text, label=answer, question=sample.question, answer=answer,
                        source_id=sample.id, video=sample.video, video_options=dict(sample.video_options))


def wrong_answers(samples: list[TaskSample]) -> dict[str, list[str]]:
    """Per question text, the answers seen in the dataset: wrong candidates for any other sample."""
    pool: dict[str, set[str]] = defaultdict(set)
    for sample in samples:
        pool[sample.question].add(sample.answer)
    return {q: sorted(a) for q, a in pool.items()}


def pointwise_judge_sample(source: PromptRecord, answer: str, correct: bool, template: dict,
                           sample_id: str) -> PromptRecord:
    positive, negative = template["labels"]
    return PromptRecord(
        id=sample_id, kind="judge_pointwise", **visuals_of(source),
        text=template["text"].format(question=source.question, answer=answer),
        label=positive if correct else negative, question=source.question, answer=source.answer,
        source_id=source.source_id, proposed=[answer],
    )


def pairwise_judge_sample(source: PromptRecord, correct_answer: str, wrong_answer: str, template: dict,
                          correct_first: bool, sample_id: str) -> PromptRecord:
    first, second = template["labels"]
    shown = [correct_answer, wrong_answer] if correct_first else [wrong_answer, correct_answer]
    return PromptRecord(
        id=sample_id, kind="judge_pairwise", **visuals_of(source),
        text=template["text"].format(question=source.question, answer_a=shown[0], answer_b=shown[1]),
        label=first if correct_first else second, question=source.question, answer=source.answer,
        source_id=source.source_id, proposed=shown,
    )


def reflection_sample(source: PromptRecord, shown: str, mode: str, template: str, sample_id: str) -> PromptRecord:
    """Reflect on a wrong attempt (`mode` cot: its full response; answer: its extracted answer)."""
    key = "response" if mode == "cot" else "answer"
    return PromptRecord(
        id=sample_id, kind=f"reflect_{mode}", **visuals_of(source),  # type: ignore[arg-type]
        text=template.format(question=source.question, **{key: shown}), label=source.answer,
        question=source.question, answer=source.answer, source_id=source.source_id, proposed=[shown],
    )
