"""What a trained policy is asked outside training, in one row format shared by `spark-vl judge`
and the registered MLflow Model: {image, question} asks for an answer; with `answer` it asks
whether that answer is right (pointwise); with `answer_a` and `answer_b`, which of them is
(pairwise). `images` (a list) instead of `image` asks about several images together, and `video` (a
video file or a folder of frames) about a clip, with or without images (the CLI).
The prompts are the ones the policy was trained on (its templates and instruction)."""

from __future__ import annotations

from typing import Any

from spark_vl.config import RunConfig
from spark_vl.data import TaskSample
from spark_vl.evaluate.judge import question_source, verdict_probabilities
from spark_vl.prompts import Templates, pairwise_judge_sample, pointwise_judge_sample, solve_prompt
from spark_vl.records import PromptRecord
from spark_vl.verify import extract_answer, extract_verdict

ROW_HELP = ("a row needs image (or a list, images, or a video) and question, and to be judged answer, or answer_a "
            "and answer_b")
OUTPUT_COLUMNS = ("reply", "answer", "verdict", "p_positive")


def request_kind(row: dict[str, Any]) -> str:
    """`solve`, `judge_pointwise` or `judge_pairwise`; ValueError naming what is missing."""
    missing = [key for key in ("image", "question")
               if not row.get(key) and not (key == "image" and (row.get("images") or row.get("video")))]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} ({ROW_HELP})")
    pair = [row.get(key) not in (None, "") for key in ("answer_a", "answer_b")]
    if any(pair) and not all(pair):
        raise ValueError(f"answer_a and answer_b come together ({ROW_HELP})")
    if all(pair):
        return "judge_pairwise"
    return "judge_pointwise" if row.get("answer") not in (None, "") else "solve"


def row_video(row: dict[str, Any]) -> str | None:
    """The row's video as it names it: a file or a folder of frames, or None."""
    video = row.get("video")
    if video is not None and not (isinstance(video, str) and video):
        raise ValueError(f"video must be the path of a video file or of a folder of frames, not {video!r}")
    return video


def row_images(row: dict[str, Any]) -> list[str]:
    """The row's images as it names them: `images`, a list, or `image`, one (none beside a video)."""
    if row.get("video") and not (row.get("images") or row.get("image")):
        return []
    images = row.get("images") or [row.get("image")]
    if not isinstance(images, list) or not all(isinstance(image, str) and image for image in images):
        raise ValueError(f"images must be a list of image files, not {images!r}")
    return images


def request_prompt(row: dict[str, Any], row_id: str, images: list[str], config: RunConfig,
                   templates: Templates, video: str | None = None) -> PromptRecord:
    """The prompt of one row; `images` (and `video`) are the row's as local files."""
    kind = request_kind(row)
    source = question_source(row_id, images, str(row["question"]), video)
    if kind == "judge_pairwise":
        return pairwise_judge_sample(source, str(row["answer_a"]), str(row["answer_b"]), templates.pairwise[0],
                                     True, row_id)
    if kind == "judge_pointwise":
        return pointwise_judge_sample(source, str(row["answer"]), True, templates.pointwise[0], row_id)
    return solve_prompt(TaskSample(row_id, 0, tuple(images), source.question, "", video=video),
                        config.data.instruction)


def respond(engine, prompts: list[PromptRecord], config: RunConfig) -> list[dict[str, Any]]:
    """Greedy replies; for a question its boxed answer, for a judge prompt its verdict and the
    probability of the positive verdict (Yes, or A) from the policy's own log-probabilities."""
    replies = [group.responses[0] for group in engine.generate(prompts, 1, greedy=True)]
    judged = [i for i, prompt in enumerate(prompts) if prompt.kind != "solve"]
    probabilities = dict(zip(judged, verdict_probabilities(engine, [prompts[i] for i in judged],
                                                           [replies[i] for i in judged]))) if judged else {}
    return [{"reply": reply,
             "answer": extract_answer(reply, config.reward.answer_format) if prompt.kind == "solve" else None,
             "verdict": extract_verdict(reply) if prompt.kind != "solve" else None,
             "p_positive": probabilities.get(i)}
            for i, (prompt, reply) in enumerate(zip(prompts, replies))]
