"""Typed rows passed between stages and stored as JSONL in the run directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from spark_vl.runio import read_jsonl, write_jsonl_atomic
from spark_vl.verify.grading import GradeItem



@dataclass(frozen=True)
class KindSpec:
    """What the code knows of a kind of prompt. `grader`: what its responses are rewarded against,
    the task's ground truth by the answer verifier (`task`), a verdict label with the judge reply
    check (`judge`), or the verdicts of the policy's own judge (`self_judge`, `spark.judge_reward`);
    `template`: the `Templates` pool its text comes from (None: the data's own
    question); `reward_metric`: the per-iteration mean reward it counts towards; `eval_metric`: the
    held-out metric that measures the skill it trains."""

    grader: Literal["task", "judge", "self_judge"]
    template: str | None
    reward_metric: str
    eval_metric: str


# The kinds of prompt a run rolls out. `solve` and `solve_open` (no answer) prompts come from the
# data; SPARK's recycling (`spark_vl.recycle`) makes the others from verified solve groups. A new
# kind is one entry here, its template pool, and the rule that makes its prompts.
KINDS: dict[str, KindSpec] = {
    "solve": KindSpec("task", None, "rollout/reward_mean", "eval/task_acc"),
    "solve_open": KindSpec("self_judge", None, "judge_reward/mean", "eval/open_self_judged"),
    "judge_pointwise": KindSpec("judge", "pointwise", "aux/judge_reward_mean", "eval/judge_pointwise_acc"),
    "judge_pairwise": KindSpec("judge", "pairwise", "aux/judge_reward_mean", "eval/judge_pairwise_acc"),
    "reflect_cot": KindSpec("task", "reflect_cot", "aux/reflect_reward_mean", "eval/task_acc_reflect"),
    "reflect_answer": KindSpec("task", "reflect_answer", "aux/reflect_reward_mean", "eval/task_acc_reflect"),
}
Kind = Literal[tuple(KINDS)]  # type: ignore[valid-type]  # the names above, for typed configs and rows
JUDGE_KINDS = tuple(kind for kind, spec in KINDS.items() if spec.grader == "judge")
SELF_JUDGED_KINDS = tuple(kind for kind, spec in KINDS.items() if spec.grader == "self_judge")
REFLECT_KINDS = tuple(kind for kind in KINDS if kind.startswith("reflect_"))


@dataclass
class PromptRecord:
    """A prompt to roll out. `label` is what its rewards are checked against: the task's ground
    truth for solve and reflect prompts, the verdict (Yes/No/A/B) for judge prompts. `video`: a
    video file or a folder of frames, shown before the images; `video_options`: the row's own
    `fps`, `video_start` and `video_end` (seconds) for a video file, as qwen-vl-utils names them."""

    id: str
    kind: Kind
    images: list[str]
    text: str
    label: str
    question: str
    answer: str
    source_id: str
    proposed: list[str] = field(default_factory=list)  # answers shown to a judge, in display order
    video: str | None = None
    video_options: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "PromptRecord":
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


@dataclass
class RolloutGroup:
    """`n` sampled responses to one prompt, with the sampling policy's per-token log-probs and,
    once verified, one reward, status and extracted answer per response."""

    prompt: PromptRecord
    responses: list[str]
    response_ids: list[list[int]]
    logprobs: list[list[float]]
    rewards: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    extracted: list[str | None] = field(default_factory=list)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "RolloutGroup":
        return cls(**{**row, "prompt": PromptRecord.from_dict(row["prompt"])})


def is_right(reward: float) -> bool:
    """Whether a response counts as right where SPARK labels it (judge and reflection data,
    reflection's fixes): only with full reward. A user's reward function may give partial credit
    (0.5 for the right word outside the box); such a response's boxed answer may well be wrong,
    and a judge taught to call it right learns a wrong verdict."""
    return reward >= 1.0


FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def video_frames(folder: str | Path) -> list[Path]:
    """A video given as a folder of frames: its image files in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)


def media_files(images: list[str] | tuple[str, ...], video: str | None) -> list[Path]:
    """Every file a prompt shows, for digests: its images, then its video's file or frames."""
    files = [Path(image) for image in images]
    if video:
        files += video_frames(video) if Path(video).is_dir() else [Path(video)]
    return files


def visuals_of(prompt: PromptRecord) -> dict[str, Any]:
    """What a prompt shows (images, video and its options), for a prompt made about the same thing."""
    return {"images": prompt.images, "video": prompt.video, "video_options": prompt.video_options}


def media(prompt: PromptRecord) -> dict[str, Any]:
    """What a prompt shows, as a record for people to read: its images, and its video if any."""
    return {"images": list(prompt.images), **({"video": prompt.video} if prompt.video else {})}


def _relative(path: str, base: Path) -> str:
    resolved = Path(path).resolve()  # in memory a path is the process's: absolute, or from its cwd
    return str(resolved.relative_to(base)) if resolved.is_relative_to(base) else path


def media_relative(row: dict[str, Any], root: Path | None) -> dict[str, Any]:
    """A prompt row with its images and video under `root` written relative to it (a moved run
    directory still finds them); files elsewhere (a user's dataset) stay as they are."""
    if root is None:
        return row
    base = root.resolve()
    out = {**row, "images": [_relative(image, base) for image in row["images"]]}
    if row.get("video"):
        out["video"] = _relative(row["video"], base)
    return out


def _media_resolved(row: dict[str, Any], root: Path | None) -> dict[str, Any]:
    """The inverse of `media_relative`: relative paths resolved against `root`."""
    if root is None:
        return row
    base = root.resolve()
    out = {**row, "images": [image if Path(image).is_absolute() else str(base / image) for image in row["images"]]}
    if row.get("video") and not Path(row["video"]).is_absolute():
        out["video"] = str(base / row["video"])
    return out


def save_prompts(path: Path, prompts: list[PromptRecord], root: Path | None = None) -> None:
    """`root`: the run directory, which image paths inside it are written relative to."""
    write_jsonl_atomic(path, (media_relative(asdict(p), root) for p in prompts))


def load_prompts(path: Path, root: Path | None = None) -> list[PromptRecord]:
    return [PromptRecord.from_dict(_media_resolved(row, root)) for row in read_jsonl(path)]


def save_groups(path: Path, groups: list[RolloutGroup], root: Path | None = None) -> None:
    write_jsonl_atomic(path, ({**asdict(g), "prompt": media_relative(asdict(g.prompt), root)} for g in groups))


def load_groups(path: Path, root: Path | None = None) -> list[RolloutGroup]:
    return [RolloutGroup.from_dict({**row, "prompt": _media_resolved(row["prompt"], root)})
            for row in read_jsonl(path)]


def task_item(response: str, prompt: PromptRecord) -> GradeItem:
    """A response to grade against the prompt's ground truth, with the prompt for a user's reward."""
    return GradeItem(response, prompt.label, "task", asdict(prompt))
