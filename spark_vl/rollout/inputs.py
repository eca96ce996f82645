"""Chat messages and model inputs for image prompts, prepared exactly as the processor expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen_vl_utils import process_vision_info


def image_message(images: list[str] | tuple[str, ...], text: str, min_pixels: int, max_pixels: int) -> list[dict]:
    """One user turn: the images (with the run's pixel bounds, so qwen-vl-utils and the processor
    resize alike) followed by the text."""
    content: list[dict[str, Any]] = [
        {"type": "image", "image": f"file://{Path(path).resolve()}", "min_pixels": min_pixels, "max_pixels": max_pixels}
        for path in images
    ]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def encode_prompts(processor, conversations: list[list[dict]]) -> dict:
    """Tokenised, left-padded batch with pixel values for a list of conversations."""
    texts = [processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) for conv in conversations]
    patch = getattr(processor.image_processor, "patch_size", 14)
    images, _ = process_vision_info(conversations, image_patch_size=patch)
    return processor(text=texts, images=images, padding=True, return_tensors="pt")
