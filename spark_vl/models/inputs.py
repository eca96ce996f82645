"""Chat messages and model inputs for image and video prompts, prepared exactly as the processor expects."""

from __future__ import annotations

import json
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from qwen_vl_utils import process_vision_info
from transformers import BatchFeature

from spark_vl.config import ModelConfig
from spark_vl.records import PromptRecord, video_frames

# Processor outputs with one row per conversation; and per kind of visual part, its patches, its
# grids (one per part) and what else comes one per part.
PER_CONVERSATION = ("input_ids", "attention_mask", "mm_token_type_ids")
VISUALS = {"image": ("pixel_values", "image_grid_thw", ()),
           "video": ("pixel_values_videos", "video_grid_thw", ("second_per_grid_ts",))}


def video_part(video: str, model_cfg: ModelConfig, options: dict[str, float] | None = None) -> dict[str, Any]:
    """A video as qwen-vl-utils reads it, within `model.video`'s budget: a file sampled at `fps`
    (at most `max_frames`; a row's own `fps`, `video_start` and `video_end` in `options`), or a
    folder's frames, at most `max_frames` of them evenly spaced."""
    cfg = model_cfg.video
    bounds = {"min_pixels": model_cfg.min_pixels, "max_pixels": cfg.max_pixels or model_cfg.max_pixels}
    if Path(video).is_dir():
        frames = video_frames(video)
        if len(frames) > cfg.max_frames:
            step = (len(frames) - 1) / (cfg.max_frames - 1)
            frames = [frames[round(i * step)] for i in range(cfg.max_frames)]
        return {"type": "video", "video": [f"file://{frame.resolve()}" for frame in frames], **bounds}
    return {"type": "video", "video": f"file://{Path(video).resolve()}", "fps": cfg.fps, "min_frames": 2,
            "max_frames": cfg.max_frames, **bounds, **(options or {})}


def user_message(images: list[str] | tuple[str, ...], text: str, min_pixels: int, max_pixels: int,
                 video: dict[str, Any] | None = None) -> list[dict]:
    """One user turn: the video part if any, the images (with the run's pixel bounds, so
    qwen-vl-utils and the processor resize alike), then the text."""
    content: list[dict[str, Any]] = [video] if video else []
    content += [
        {"type": "image", "image": f"file://{Path(path).resolve()}", "min_pixels": min_pixels, "max_pixels": max_pixels}
        for path in images
    ]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def conversation(prompt: PromptRecord, model_cfg: ModelConfig) -> list[dict]:
    """A prompt record as the chat the model reads, with the run's pixel and frame bounds."""
    video = prompt.video and video_part(prompt.video, model_cfg, prompt.video_options)
    return user_message(prompt.images, prompt.text, model_cfg.min_pixels, model_cfg.max_pixels, video)


def encode_prompts(processor, conversations: list[list[dict]], share_visuals: bool = False) -> BatchFeature:
    """Tokenised, left-padded batch with pixel values for a list of conversations.

    A training batch repeats each prompt once per sampled response: each distinct conversation
    is read, resized and tokenised once, and its rows are repeated. Its images' and videos'
    patches are repeated too, unless `share_visuals`: then `pixel_values` (`pixel_values_videos`)
    holds each distinct image (video) once, `distinct_image_grid_thw` (`distinct_video_grid_thw`)
    their grids and `image_index` (`video_index`) which one each of the batch is (see
    `models.forward.shared_features`).
    """
    keys = [json.dumps(conv, sort_keys=True, default=repr) for conv in conversations]  # in-memory images: by identity
    distinct = {key: conv for key, conv in zip(keys, conversations)}
    if len(distinct) == len(keys):
        return _encode(processor, conversations)
    inputs = _encode(processor, list(distinct.values()))
    known = set(PER_CONVERSATION) | {key for pixels, grid, extra in VISUALS.values() for key in (pixels, grid, *extra)}
    if not set(inputs) <= known:  # an output this does not know how to repeat: encode every row
        return _encode(processor, conversations)
    position = {key: i for i, key in enumerate(distinct)}
    rows = [position[key] for key in keys]
    out = {key: inputs[key][rows] for key in PER_CONVERSATION if key in inputs}
    for kind, (pixels, grid, extra) in VISUALS.items():
        if pixels not in inputs:
            continue
        start = [0, *accumulate(part_count(conv, kind) for conv in distinct.values())]
        parts = [i for row in rows for i in range(start[row], start[row + 1])]
        out[grid] = inputs[grid][parts]
        out.update({key: inputs[key][parts] for key in extra if key in inputs})
        if share_visuals:
            out[pixels] = inputs[pixels]
            out[f"distinct_{grid}"] = inputs[grid]
            out[f"{kind}_index"] = torch.tensor(parts)
        else:
            patch_start = [0, *accumulate(inputs[grid].prod(-1).tolist())]
            out[pixels] = torch.cat([inputs[pixels][patch_start[i]:patch_start[i + 1]] for i in parts])
    return BatchFeature(out)


def part_count(conversation: list[dict], kind: str) -> int:
    """How many images (videos) a conversation holds."""
    return sum(isinstance(part, dict) and part.get("type") == kind
               for turn in conversation for part in (turn["content"] if isinstance(turn["content"], list) else []))


def _encode(processor, conversations: list[list[dict]]) -> BatchFeature:
    texts = [processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) for conv in conversations]
    patch = getattr(processor.image_processor, "patch_size", 14)
    images, videos, video_kwargs = process_vision_info(conversations, return_video_kwargs=True,
                                                       return_video_metadata=True, image_patch_size=patch)
    if not videos:
        return processor(text=texts, images=images, padding=True, return_tensors="pt")
    # qwen-vl-utils sampled and resized the frames already: the processor keeps them as they are
    # (and, told to cap pixels as qwen-vl-utils does, has nothing to cap and no warning to give).
    videos, metadata = zip(*videos)
    return processor(text=texts, images=images, videos=list(videos), video_metadata=list(metadata), padding=True,
                     return_tensors="pt",
                     videos_kwargs={"do_resize": False, "cap_pixels_per_frame": True, **video_kwargs})
