"""Thousands of odd inputs (Hypothesis) against the dataset loader and the judge-verdict parser:
every row is loaded or refused with a reason, every reply gives a verdict or none; nothing crashes.
(The answer grader's properties are in test_grading.py.)"""

import io
import json
import struct
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from spark_vl.data import scan_dataset
from spark_vl.data.loaders import BAD_ROW_REASONS
from spark_vl.verify import extract_verdict, judge_reward

MANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children,
                                                                                         max_size=3), max_leaves=8)
IMAGE_REF = st.sampled_from(["ok.png", "cmyk.jpg", "palette.png", "gray16.png", "tiny.png", "truncated.png",
                             "empty.png", "huge.png", "text.png", "missing.png", "../outside.png", "/etc/passwd",
                             "file://ok.png", "", "ok.png\x00", "sub/../ok.png"])
FIELDS = st.fixed_dictionaries({}, optional={
    "id": JSON, "image": IMAGE_REF | JSON, "images": st.lists(IMAGE_REF, max_size=3) | JSON,
    "question": st.text(max_size=30) | JSON, "problem": JSON, "answer": st.text(max_size=10) | JSON,
    "max_pixels": JSON, "message": JSON | st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["image", "text", "video"]), "image": IMAGE_REF,
                               "text": st.text(max_size=10)}), max_size=3) | JSON}), max_size=2).map(json.dumps)})


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


def _image_folder(folder):
    def save(name, image, fmt="PNG"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        (folder / name).write_bytes(buffer.getvalue())
        return buffer.getvalue()

    good = save("ok.png", Image.new("RGB", (32, 32), (200, 10, 10)))
    save("cmyk.jpg", Image.new("CMYK", (16, 16)), "JPEG")
    save("palette.png", Image.new("P", (16, 16)))
    save("gray16.png", Image.new("I;16", (16, 16)))
    save("tiny.png", Image.new("RGB", (1, 1)))
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge.png").write_bytes(_png_with_size(100_000, 100_000))
    (folder / "text.png").write_text("not an image")
    (folder / "sub").mkdir()


@MANY
@given(rows=st.lists(FIELDS | JSON, min_size=1, max_size=6), raw=st.lists(st.text(max_size=30), max_size=2))
def test_any_row_is_loaded_or_refused_with_a_reason(tmp_path_factory, rows, raw):
    folder = tmp_path_factory.mktemp("data")
    _image_folder(folder)
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "".join(line.replace("\n", " ") + "\n"
                                                                             for line in raw))
    result = scan_dataset(path, max_image_pixels=10_000_000)
    assert all(bad.reason in BAD_ROW_REASONS and bad.detail for bad in result.bad)
    for sample in result.samples:
        assert isinstance(sample.question, str) and sample.question and sample.answer
        assert all(image.startswith(str(folder)) for image in sample.images)
    lines = [line for line in path.read_text().split("\n") if line.strip()]
    assert len(result.samples) + len(result.bad) == len(lines)


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=120), st.sampled_from(["Yes", "No", "A", "B", "(A)", ""]))
def test_any_reply_gives_a_verdict_or_none(reply, label):
    verdict = extract_verdict(reply)
    assert verdict is None or isinstance(verdict, str)
    assert judge_reward(reply, label) in (0.0, 1.0)
