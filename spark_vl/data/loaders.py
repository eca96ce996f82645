"""Read task datasets (JSONL, JSON, Parquet, local HF `datasets` folders) into typed samples.

Two row schemas are understood:
- ours: `{"image": "images/0.png", "question": "...", "answer": "..."}` (`images` may be a list;
  `video` names a video file or a folder of frames, with or without images);
- LMM-R1 / Spark-Data: `{"message": "<JSON list of chat messages>", "answer": "..."}`, where
  image and video parts carry a path (and often `max_pixels`).
Image and video paths are resolved relative to the dataset file and must stay inside its folder.
A row with `"answer": null`, or with `"reward": "judge"`, is an open-ended prompt: no verifier can
check it, and the policy's own judge rewards it (`spark.judge_reward`).
Every bad row is reported with its row number and a reason; good rows are kept.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from PIL import Image

from spark_vl.records import FRAME_SUFFIXES, video_frames
from spark_vl.runio import logger

# What qwen-vl-utils reads video files with (its torchvision path needs a torchvision with read_video).
VIDEO_READERS = ("decord", "torchcodec")
# A row's own sampling of its video file, in qwen-vl-utils' names: frames per second, and the
# clip's first and last second.
VIDEO_OPTIONS = ("fps", "video_start", "video_end")

BAD_ROW_REASONS = (
    "unparseable",  # not JSON / not an object / no question or image field
    "missing_answer",
    "missing_file",
    "corrupt_image",
    "image_too_large",  # more pixels than data.max_image_pixels (decompression bomb)
    "corrupt_video",  # a video file that cannot be decoded, or a folder without frames
    "path_escape",  # image or video path leads outside the dataset folder
)


class DatasetError(ValueError):
    """A dataset that cannot be used at all; the message names the file and the fix."""


@dataclass(frozen=True)
class TaskSample:
    """One prompt: image(s) and/or a video, question text and ground-truth answer (None: an
    open-ended prompt, rewarded by the judge)."""

    id: str
    row: int
    images: tuple[str, ...]
    question: str
    answer: str | None
    max_pixels: int | None = None
    video: str | None = None  # a video file or a folder of frames
    video_options: dict[str, float] = field(default_factory=dict)  # a file's fps, video_start, video_end


def verifiable(samples: list[TaskSample]) -> list[TaskSample]:
    """The samples with a ground-truth answer, which verifiers grade (open-ended ones left out)."""
    return [s for s in samples if s.answer is not None]


@dataclass(frozen=True)
class BadRow:
    row: int
    reason: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "reason": self.reason, "detail": self.detail}


@dataclass
class LoadedDataset:
    path: Path
    samples: list[TaskSample] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


class _BadRowError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _raw_rows(path: Path, split: str) -> Iterator[tuple[int, Any]]:
    """(row number, row) in file order; a row that cannot be parsed comes as an exception."""
    if path.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DatasetError(f"{path} is not a saved Hugging Face dataset folder: {exc}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DatasetError(f"{path} has splits {list(loaded)}, not '{split}'")
            loaded = loaded[split]
        yield from enumerate(loaded)
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path) as handle:
            for i, line in enumerate(handle):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield i, _BadRowError("unparseable", f"invalid JSON: {exc.msg} at column {exc.colno}")
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DatasetError(f"{path} must hold a JSON list of rows (or {{'data': [...]}})")
        yield from enumerate(data)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist())
    else:
        raise DatasetError(f"{path}: unsupported dataset type '{suffix}'; use .jsonl, .json, .parquet or a "
                           "folder written by datasets.save_to_disk")


def _strip_file_scheme(value: str) -> str:
    return value[len("file://"):] if value.startswith("file://") else value


def _parse_row(row: Any) -> tuple[list[str], Any, dict[str, Any], str, Any, int | None]:
    """(image refs, video ref or None, video options, question, answer, max_pixels) of one row in
    either schema."""
    if isinstance(row, _BadRowError):
        raise row
    if not isinstance(row, dict):
        raise _BadRowError("unparseable", f"row is a {type(row).__name__}, not an object")
    answer = row.get("answer")
    if "message" in row:
        messages = row["message"]
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as exc:
                raise _BadRowError("unparseable", f"'message' is not a JSON string of messages: {exc.msg}")
        if not isinstance(messages, list):
            raise _BadRowError("unparseable", "'message' must be a list of chat messages")
        images, videos, texts, max_pixels, options = [], [], [], None, {}
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
                continue
            if not isinstance(content, list):
                raise _BadRowError("unparseable", "a message's 'content' must be text or a list of parts")
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "image" or "image" in part:
                    images.append(part.get("image"))
                    max_pixels = part.get("max_pixels", max_pixels)
                elif part.get("type") == "video" or "video" in part:
                    videos.append(part.get("video"))
                    options = {key: part[key] for key in VIDEO_OPTIONS if part.get(key) is not None}
                elif part.get("type") == "text" or "text" in part:
                    texts.append(str(part.get("text", "")))
        question = "\n".join(t for t in texts if t)
        if len(videos) > 1:
            raise _BadRowError("unparseable", f"{len(videos)} video parts: a prompt holds at most one video")
        video = videos[0] if videos else None
    else:
        images = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
        if isinstance(images, str):
            images = [images]
        question = row.get("question") or row.get("problem") or ""
        max_pixels = row.get("max_pixels")
        video = row.get("video")
        options = {key: row[key] for key in VIDEO_OPTIONS if row.get(key) is not None}
    if not isinstance(question, str):
        raise _BadRowError("unparseable", f"the question must be text, not {type(question).__name__}")
    if not isinstance(images, list):
        raise _BadRowError("unparseable", "'images' must be a list of file paths")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise _BadRowError("unparseable", f"'max_pixels' must be a positive whole number, not {max_pixels!r}")
    if not question:
        raise _BadRowError("unparseable", "no question text ('question', 'problem' or text in 'message')")
    if not images and video is None:
        raise _BadRowError("unparseable", "no image or video ('image', 'images', 'video' or an image or video "
                                          "part in 'message')")
    if row.get("reward", "verifier") not in ("verifier", "judge"):
        raise _BadRowError("unparseable", f"'reward' must be 'verifier' or 'judge', not {row['reward']!r}")
    if row.get("reward") == "judge" or ("answer" in row and answer is None):
        answer = None  # open-ended: rewarded by the judge
    elif answer is None or str(answer).strip() == "":
        raise _BadRowError("missing_answer", "the 'answer' field is missing or empty: give the answer, or "
                                             "\"answer\": null for an open-ended prompt the judge rewards")
    elif isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise _BadRowError("unparseable", f"the answer must be text or a number, not {type(answer).__name__}")
    if not all(isinstance(ref, str) and ref for ref in images):
        raise _BadRowError("unparseable", "image entries must be file paths (embedded images are not supported)")
    if video is not None and not (isinstance(video, str) and video):
        raise _BadRowError("unparseable", "'video' must be the path of a video file or of a folder of frames")
    return images, video, _video_options(options, video), question, answer, max_pixels


def _video_options(options: dict[str, Any], video: str | None) -> dict[str, float]:
    """A row's fps and clip bounds, checked: positive numbers, the start before the end."""
    if options and video is None:
        raise _BadRowError("unparseable", f"{', '.join(options)} without a 'video'")
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (key == "fps" and not value):
            raise _BadRowError("unparseable", f"'{key}' must be a {'positive' if key == 'fps' else 'non-negative'} "
                                              f"number of {'frames per second' if key == 'fps' else 'seconds'}, "
                                              f"not {value!r}")
    if "video_start" in options and "video_end" in options and options["video_start"] >= options["video_end"]:
        raise _BadRowError("unparseable", f"'video_start' ({options['video_start']}) must come before 'video_end' "
                                          f"({options['video_end']})")
    return {key: float(value) for key, value in options.items()}


class MediaChecker:
    """Checks image and video files once each: inside the dataset folder, present, decodable, no
    image a bomb (a folder of frames: each frame an image)."""

    def __init__(self, root: Path, max_pixels: int):
        self.root = root.resolve()
        self.max_pixels = max_pixels
        self._seen: dict[Path, _BadRowError | None] = {}

    def _inside(self, ref: str, what: str) -> Path:
        if "\x00" in ref:
            raise _BadRowError("missing_file", f"{what} path {ref!r} holds a NUL character; no file is named so")
        path = (self.root / _strip_file_scheme(ref)).resolve()
        if not path.is_relative_to(self.root):
            raise _BadRowError("path_escape", f"{what} path '{ref}' leads outside the dataset folder {self.root}; "
                                              f"move the {what} under that folder or fix the path")
        return path

    def resolve(self, ref: str) -> Path:
        path = self._inside(ref, "image")
        if path not in self._seen:
            self._seen[path] = self._check(path, ref)
        if self._seen[path] is not None:
            raise self._seen[path]
        return path

    def resolve_video(self, ref: str) -> Path:
        """A video file that decodes to at least one frame, or a folder of frames that all decode."""
        path = self._inside(ref, "video")
        if path.is_dir():
            frames = video_frames(path)
            if not frames:
                kinds = ", ".join(FRAME_SUFFIXES)
                raise _BadRowError("corrupt_video", f"video folder '{ref}' holds no frames ({kinds} files, taken in "
                                                    "name order)")
            for frame in frames:
                self.resolve(str(frame.relative_to(self.root)))
            return path
        if not path.is_file():
            raise _BadRowError("missing_file", f"video '{ref}' does not exist (looked for {path})")
        if path not in self._seen:
            self._seen[path] = _check_video_file(path, ref)
        if self._seen[path] is not None:
            raise self._seen[path]
        return path

    def _check(self, path: Path, ref: str) -> _BadRowError | None:
        if not path.is_file():
            return _BadRowError("missing_file", f"image '{ref}' does not exist (looked for {path})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    width, height = image.size
                    if width * height > self.max_pixels:
                        return _BadRowError("image_too_large", f"image '{ref}' is {width}x{height}, over the "
                                            f"limit of {self.max_pixels} pixels (data.max_image_pixels)")
                    image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return _BadRowError("image_too_large", f"image '{ref}': {exc}")
        except (OSError, SyntaxError, ValueError) as exc:
            return _BadRowError("corrupt_image", f"image '{ref}' cannot be decoded: {exc}")
        return None


def _check_video_file(path: Path, ref: str) -> _BadRowError | None:
    """A video file qwen-vl-utils can read: a reader for files is installed and its first frame decodes."""
    if not any(importlib.util.find_spec(reader) for reader in VIDEO_READERS):
        raise DatasetError(f"video '{ref}': reading video files needs decord or torchcodec "
                           "(`pip install decord`); or give the video as a folder of frames")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return _BadRowError("corrupt_video", f"video '{ref}' holds no video stream")
            next(container.decode(video=0))
    except StopIteration:
        return _BadRowError("corrupt_video", f"video '{ref}' holds no frames")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return _BadRowError("corrupt_video", f"video '{ref}' cannot be decoded: {exc}")
    return None


def scan_dataset(path: str | Path, max_image_pixels: int = 50_000_000, split: str = "train") -> LoadedDataset:
    """Sort every row of a dataset into good samples and bad rows (with their reason)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    root = path if path.is_dir() else path.parent
    checker = MediaChecker(root, max_image_pixels)
    result = LoadedDataset(path=path)
    for row_number, row in _raw_rows(path, split):
        try:
            refs, video_ref, video_options, question, answer, max_pixels = _parse_row(row)
            images = tuple(str(checker.resolve(ref)) for ref in refs)
            video = str(checker.resolve_video(video_ref)) if video_ref is not None else None
            if video_options and Path(video).is_dir():
                raise _BadRowError("unparseable", f"{', '.join(video_options)}: for a video file only; a folder "
                                                  "of frames is taken frame by frame")
        except _BadRowError as bad:
            result.bad.append(BadRow(row_number, bad.reason, bad.detail))
            continue
        sample_id = str(row.get("id", f"{path.stem}-{row_number}"))
        result.samples.append(TaskSample(sample_id, row_number, images, question,
                                         None if answer is None else str(answer).strip(), max_pixels, video,
                                         video_options))
    return result


def warn_bad_rows(result: LoadedDataset) -> None:
    if result.bad:
        logger.warning("%s: dropped %d bad row(s) of %d; run `spark-vl validate-data %s` for the list",
                       result.path, len(result.bad), len(result.bad) + len(result.samples), result.path)


def load_dataset(path: str | Path, max_image_pixels: int = 50_000_000, split: str = "train",
                 warn: bool = True) -> LoadedDataset:
    """The good rows of a dataset; fails when none is good. `warn`: warn here of dropped rows
    (a run warns once, from `prepare_run`, however often its stages load the dataset)."""
    result = scan_dataset(path, max_image_pixels, split)
    if warn:
        warn_bad_rows(result)
    if not result.samples:
        raise DatasetError(f"{path} has no usable row ({len(result.bad)} bad); "
                           f"run `spark-vl validate-data {path}` to see why")
    return result
