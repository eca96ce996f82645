import hashlib
import json

import pytest
from PIL import Image

from spark_vl.config import BuiltinDataConfig
from spark_vl.data.tasks import (COLOURS, DIRECTIONS, FAMILIES, MOTION_FRAMES, colour_scene, compare_scene,
                                 make_dataset, motion_scene, render, render_images)


def _manifest(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_family_present_with_answers(tiny_data_dir):
    rows = _manifest(tiny_data_dir / "train.jsonl")
    assert {r["family"] for r in rows} == set(FAMILIES) - {"compare", "motion", "describe"}  # one image, an answer
    assert all(r["answer"] and (tiny_data_dir / r["image"]).is_file() for r in rows)


def test_deterministic_by_seed(tmp_path):
    cfg = BuiltinDataConfig(n_train=12, n_eval=6, families=["count", "size"])
    make_dataset(tmp_path / "a", cfg)
    make_dataset(tmp_path / "b", cfg)
    make_dataset(tmp_path / "c", cfg.model_copy(update={"seed": 7}))
    assert _manifest(tmp_path / "a" / "train.jsonl") == _manifest(tmp_path / "b" / "train.jsonl")
    for row in _manifest(tmp_path / "a" / "train.jsonl"):
        assert _digest(tmp_path / "a" / row["image"]) == _digest(tmp_path / "b" / row["image"])
    a_images = {_digest(p) for p in (tmp_path / "a" / "images").rglob("*.png")}
    c_images = {_digest(p) for p in (tmp_path / "c" / "images").rglob("*.png")}
    assert a_images != c_images


def test_train_and_held_out_do_not_overlap(tmp_path):
    make_dataset(tmp_path, BuiltinDataConfig(n_train=300, n_eval=100, families=["colour", "position"]))
    train = {_digest(p) for p in (tmp_path / "images" / "train").glob("*.png")}
    held_out = {_digest(p) for p in (tmp_path / "images" / "eval").glob("*.png")}
    assert len(held_out) == 100
    assert not train & held_out


def test_colour_answer_matches_pixels():
    import random

    rng = random.Random(3)
    for _ in range(10):
        scene = colour_scene(rng, 112, 3)
        shape = scene.shapes[0]
        image = render(scene, 112)
        assert image.getpixel((shape.cx, shape.cy + shape.radius // 2)) == COLOURS[scene.answer]


@pytest.mark.parametrize("difficulty", [1, 3])
def test_count_range_grows_with_difficulty(difficulty):
    import random

    rng = random.Random(0)
    answers = {int(FAMILIES["count"](rng, 112, difficulty).answer) for _ in range(200)}
    assert answers == set(range(1, 3 + difficulty))


def test_images_are_png_of_configured_size(tiny_data_dir):
    row = _manifest(tiny_data_dir / "eval.jsonl")[0]
    with Image.open(tiny_data_dir / row["image"]) as image:
        assert image.size == (112, 112) and image.format == "PNG"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_held_out_split_covers_every_answer_of_the_training_split(tmp_path, family):
    make_dataset(tmp_path, BuiltinDataConfig(n_train=400, n_eval=200, families=[family]))
    train = {r["answer"] for r in _manifest(tmp_path / "train.jsonl")}
    held_out = {r["answer"] for r in _manifest(tmp_path / "eval.jsonl")}
    assert train == held_out or len(train) > 8  # arithmetic has many sums; small vocabularies match


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_compare_scenes_are_two_images_whose_pixels_give_the_answer(difficulty):
    """Which image has more circles: the circles drawn (a circle's centre is its colour) decide
    it; same colour: the two shapes' centre pixels decide it. Both kinds of question come up,
    with every answer."""
    import random

    rng = random.Random(difficulty)
    answers = set()
    for _ in range(60):
        scene = compare_scene(rng, 112, difficulty)
        images = render_images(scene, 112)
        assert len(images) == 2 and all(image.size == (112, 112) for image in images)
        drawn = []
        for image, shapes in zip(images, (scene.shapes, scene.second)):
            assert all(image.getpixel((s.cx, s.cy)) == COLOURS[s.colour] for s in shapes if s.kind != "triangle")
            drawn.append(shapes)
        if scene.question.startswith("Which image"):
            first, second = (sum(s.kind == "circle" for s in shapes) for shapes in drawn)
            assert first != second and scene.answer == ("first" if first > second else "second")
        else:
            assert scene.answer == ("yes" if drawn[0][0].colour == drawn[1][0].colour else "no")
        answers.add(scene.answer)
    assert answers == {"first", "second", "yes", "no"}


def test_compare_rows_name_both_images_and_load(tmp_path):
    from spark_vl.data import load_dataset

    manifests = make_dataset(tmp_path, BuiltinDataConfig(n_train=8, n_eval=4, families=["compare", "colour"]))
    rows = _manifest(manifests["train"])
    assert [len(r.get("images", [r.get("image")])) for r in rows] == [2, 1] * 4
    samples = load_dataset(manifests["train"]).samples
    assert [len(s.images) for s in samples] == [2, 1] * 4
    assert _digest(tmp_path / rows[0]["images"][0]) != _digest(tmp_path / rows[0]["images"][1])


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_motion_clips_move_the_dot_the_way_the_answer_says(difficulty):
    """Each frame draws the dot where the scene puts it; from frame to frame it moves the way the
    answer says, in equal steps, and stays in the picture; left and right only at difficulty 1."""
    import random

    rng = random.Random(difficulty)
    answers = set()
    for _ in range(60):
        scene = motion_scene(rng, 112, difficulty)
        frames = render_images(scene, 112)
        assert len(frames) == MOTION_FRAMES and all(frame.size == (112, 112) for frame in frames)
        dots = [next(s for s in shapes if s.kind == "circle") for shapes in scene.frames]
        for frame, dot in zip(frames, dots):
            assert frame.getpixel((dot.cx, dot.cy)) == COLOURS[dot.colour]
            assert dot.radius < dot.cx < 112 - dot.radius and dot.radius < dot.cy < 112 - dot.radius
        steps = {(b.cx - a.cx, b.cy - a.cy) for a, b in zip(dots, dots[1:])}
        (step,) = steps
        dx, dy = DIRECTIONS[scene.answer]
        assert step[0] * dx + step[1] * dy > 0 and step[0] * dy == step[1] * dx
        answers.add(scene.answer)
    assert answers == ({"left", "right"} if difficulty == 1 else set(DIRECTIONS))


def test_motion_rows_name_a_folder_of_frames_and_load(tmp_path):
    from spark_vl.data import load_dataset

    manifests = make_dataset(tmp_path, BuiltinDataConfig(n_train=6, n_eval=4, families=["motion", "colour"]))
    rows = _manifest(manifests["train"])
    assert [("video" in r, "image" in r) for r in rows] == [(True, False), (False, True)] * 3
    assert sorted(p.name for p in (tmp_path / rows[0]["video"]).iterdir()) == [f"{k:02d}.png" for k in range(4)]
    samples = load_dataset(manifests["train"]).samples
    assert [s.video is not None for s in samples] == [True, False] * 3 and samples[0].images == ()
