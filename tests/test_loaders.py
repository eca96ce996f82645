import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from spark_vl.cli import app
from spark_vl.data import DatasetError, load_dataset, scan_dataset


@pytest.fixture
def dataset_dir(tmp_path, tiny_data_dir):
    shutil.copytree(tiny_data_dir / "images", tmp_path / "images")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    (tmp_path.parent / "outside.png").write_bytes((tmp_path / "images/train/000000.png").read_bytes())
    return tmp_path


def _lmm_r1(image, text="How many circles?", answer="3"):
    message = [{"role": "user", "content": [{"type": "image", "image": image, "max_pixels": 12544},
                                            {"type": "text", "text": text}]}]
    return {"message": json.dumps(message), "answer": answer}


BAD_ROWS = [
    ("unparseable", '{"image": "images/train/000000.png", "question": '),
    ("missing_answer", json.dumps({"image": "images/train/000000.png", "question": "q?"})),
    ("missing_file", json.dumps({"image": "images/nope.png", "question": "q?", "answer": "1"})),
    ("corrupt_image", json.dumps({"image": "corrupt.png", "question": "q?", "answer": "1"})),
    ("image_too_large", json.dumps({"image": "big.png", "question": "q?", "answer": "1"})),
    ("path_escape", json.dumps({"image": "../outside.png", "question": "q?", "answer": "1"})),
    ("path_escape", json.dumps(_lmm_r1("file:///etc/passwd"))),
]


def _write_mixed(dataset_dir):
    good = [json.dumps({"image": "images/train/000001.png", "question": "What colour?", "answer": "red"}),
            json.dumps(_lmm_r1("images/train/000002.png"))]
    lines = good[:1] + [line for _, line in BAD_ROWS] + good[1:]
    path = dataset_dir / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_bad_row_kind_is_named(dataset_dir):
    result = scan_dataset(_write_mixed(dataset_dir), max_image_pixels=150 * 150)
    assert [s.row for s in result.samples] == [0, len(BAD_ROWS) + 1]
    assert [(b.row, b.reason) for b in result.bad] == [(i + 1, reason) for i, (reason, _) in enumerate(BAD_ROWS)]
    assert "images/nope.png" in result.bad[2].detail


def test_lmm_r1_row_is_parsed(dataset_dir):
    sample = scan_dataset(_write_mixed(dataset_dir), max_image_pixels=150 * 150).samples[1]
    assert sample.question == "How many circles?"
    assert sample.answer == "3"
    assert sample.max_pixels == 12544
    assert sample.images == (str((dataset_dir / "images/train/000002.png").resolve()),)


def test_real_decompression_bomb_is_caught(dataset_dir):
    Image.new("1", (12000, 12000)).save(dataset_dir / "bomb.png")
    path = dataset_dir / "bomb.jsonl"
    path.write_text(json.dumps({"image": "bomb.png", "question": "q?", "answer": "1"}) + "\n")
    assert [b.reason for b in scan_dataset(path).bad] == ["image_too_large"]


def test_json_parquet_and_hf_folder(dataset_dir):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"image": "images/train/000003.png", "question": "What colour?", "answer": "blue"},
            {"image": "images/train/000004.png", "question": "What colour?", "answer": None}]
    (dataset_dir / "rows.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), dataset_dir / "rows.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(dataset_dir / "hf"))
    shutil.copytree(dataset_dir / "images", dataset_dir / "hf" / "images")
    for path in ["rows.json", "rows.parquet", "hf"]:
        result = scan_dataset(dataset_dir / path)
        assert [s.answer for s in result.samples] == ["blue", None], path  # a null answer: open-ended
        assert result.bad == [], path


def test_no_good_row_is_an_error(dataset_dir):
    path = dataset_dir / "bad.jsonl"
    path.write_text(json.dumps({"image": "images/nope.png", "question": "q?", "answer": "1"}) + "\n")
    with pytest.raises(DatasetError, match="no usable row"):
        load_dataset(path)


def test_validate_data_cli(dataset_dir):
    path = _write_mixed(dataset_dir)
    result = CliRunner().invoke(app, ["validate-data", str(path), "--json", "--max-image-pixels", "22500"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["good"] == 2
    assert [(b["row"], b["reason"]) for b in summary["bad"]] == [(i + 1, r) for i, (r, _) in enumerate(BAD_ROWS)]
    assert lines[0].startswith("row 1: unparseable")

    empty = dataset_dir / "empty.jsonl"
    empty.write_text(json.dumps({"image": "corrupt.png", "question": "q?", "answer": "1"}) + "\n")
    assert CliRunner().invoke(app, ["validate-data", str(empty)]).exit_code == 1


def test_a_run_warns_of_bad_rows_once(dataset_dir, tiny_data_dir):
    import logging

    from spark_vl.config import load_config
    from spark_vl.pipeline import run
    from tests.test_flow import DEEPSPEED
    from tests.test_pipeline import SMALL

    path = _write_mixed(dataset_dir)
    cfg = load_config(None, SMALL + [f"data.train_path={path}", "train.iterations=2",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", f"train.deepspeed_config={DEEPSPEED}"])
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("spark_vl").addHandler(handler)
    try:
        run(cfg, dataset_dir / "run")
    finally:
        logging.getLogger("spark_vl").removeHandler(handler)
    scanned = scan_dataset(path)
    bad, rows = len(scanned.bad), len(scanned.bad) + len(scanned.samples)
    dropped = [r.getMessage() for r in records if "dropped" in r.getMessage()]
    assert dropped == [f"{path}: dropped {bad} bad row(s) of {rows}; run `spark-vl validate-data {path}` for the list"]


def write_mp4(path, frames: list[Image.Image], fps: int = 4):
    """A real H.264 clip of `frames`, written with PyAV (which qwen-vl-utils installs)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())


def test_video_rows_are_read_or_refused_with_the_reason(dataset_dir):
    """A video file or a folder of frames, alone or with images, in both schemas; a missing file,
    an undecodable file, an empty folder, a bad frame and a path outside the folder are named."""
    frames = [Image.new("RGB", (64, 48), (40 * i, 0, 0)) for i in range(6)]
    (dataset_dir / "clip").mkdir()
    for i, frame in enumerate(frames):
        frame.save(dataset_dir / "clip" / f"{i:03d}.png")
    write_mp4(dataset_dir / "clip.mp4", frames)
    (dataset_dir / "empty").mkdir()
    (dataset_dir / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (dataset_dir / "bad-frames").mkdir()
    shutil.copy(dataset_dir / "corrupt.png", dataset_dir / "bad-frames" / "000.png")
    message = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"},
                                            {"type": "text", "text": "Moves?"}]}]
    rows = [{"video": "clip", "question": "Which way?", "answer": "left"},
            {"video": "clip.mp4", "image": "images/train/000001.png", "question": "Same?", "answer": "yes"},
            {"message": json.dumps(message), "answer": "no"},
            {"video": "nope.mp4", "question": "q?", "answer": "1"},
            {"video": "broken.mp4", "question": "q?", "answer": "1"},
            {"video": "empty", "question": "q?", "answer": "1"},
            {"video": "bad-frames", "question": "q?", "answer": "1"},
            {"video": "../outside.png", "question": "q?", "answer": "1"},
            {"video": ["clip.mp4"], "question": "q?", "answer": "1"}]
    path = dataset_dir / "videos.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = scan_dataset(path)
    assert [(s.video, s.images) for s in result.samples] == [
        (str((dataset_dir / "clip").resolve()), ()),
        (str((dataset_dir / "clip.mp4").resolve()), (str((dataset_dir / "images/train/000001.png").resolve()),)),
        (str((dataset_dir / "clip.mp4").resolve()), ())]
    assert [(b.row, b.reason) for b in result.bad] == [(3, "missing_file"), (4, "corrupt_video"),
                                                       (5, "corrupt_video"), (6, "corrupt_image"),
                                                       (7, "path_escape"), (8, "unparseable")]
    assert "video 'broken.mp4' cannot be decoded" in result.bad[1].detail
    assert "holds no frames" in result.bad[2].detail and "bad-frames/000.png" in result.bad[3].detail


def test_a_rows_own_clip_bounds_and_rate_are_read_and_checked(dataset_dir):
    """`fps`, `video_start` and `video_end` of a row (or of its LMM-R1 video part) travel with the
    sample and bound the frames its file gives; bad ones are named."""
    import torch
    from qwen_vl_utils.vision_process import fetch_video

    from spark_vl.config import ModelConfig
    from spark_vl.models.inputs import video_part

    frames = [Image.new("RGB", (64, 48), (20 * i, 0, 0)) for i in range(12)]
    write_mp4(dataset_dir / "clip.mp4", frames, fps=4)  # 3 s
    (dataset_dir / "clip").mkdir()
    frames[0].save(dataset_dir / "clip" / "0.png")
    message = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4", "video_end": 1.5},
                                            {"type": "text", "text": "Moves?"}]}]
    rows = [{"video": "clip.mp4", "video_start": 1, "video_end": 2.5, "fps": 4, "question": "q?", "answer": "1"},
            {"message": json.dumps(message), "answer": "1"},
            {"video": "clip.mp4", "video_start": 2, "video_end": 1, "question": "q?", "answer": "1"},
            {"video": "clip.mp4", "fps": 0, "question": "q?", "answer": "1"},
            {"video": "clip", "fps": 1, "question": "q?", "answer": "1"},
            {"image": "images/train/000001.png", "video_end": 1, "question": "q?", "answer": "1"}]
    path = dataset_dir / "bounds.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = scan_dataset(path)
    assert [s.video_options for s in result.samples] == [{"fps": 4.0, "video_start": 1.0, "video_end": 2.5},
                                                         {"video_end": 1.5}]
    assert [(b.row, b.reason) for b in result.bad] == [(2, "unparseable"), (3, "unparseable"), (4, "unparseable"),
                                                       (5, "unparseable")]
    assert "must come before 'video_end'" in result.bad[0].detail and "'fps' must be a positive" in result.bad[1].detail
    assert "for a video file only" in result.bad[2].detail and "without a 'video'" in result.bad[3].detail
    cfg = ModelConfig()
    whole, clip = (fetch_video(video_part(s.video, cfg, options), image_patch_size=14)
                   for s, options in ((result.samples[0], {}), (result.samples[0], result.samples[0].video_options)))
    assert len(whole) == 4 and len(clip) == 4  # 3 s at 2 fps = 6, capped at 4; 1.5 s at 4 fps = 6, capped at 4
    short = fetch_video(video_part(result.samples[1].video, cfg, result.samples[1].video_options), image_patch_size=14)
    assert len(short) == 2  # the first 1.5 s at 2 fps: 3 frames, rounded to a temporal patch
    assert not torch.equal(clip[0], whole[0])  # the clip starts at 1 s, not at the first frame
