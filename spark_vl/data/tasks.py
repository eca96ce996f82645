"""Built-in visual tasks, rendered with PIL.

Each family draws a scene from a seeded RNG and asks one question whose answer is a short
word or number; `compare` scenes are two images asked about together, `motion` scenes a short
clip (a folder of frames). `describe` scenes are open-ended: several answers are right, the row
carries no answer (the judge rewards it) and a rubric that only benchmarks read
(`open_ended_score`). Scenes are described by a key; the held-out split never repeats a training
key.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from spark_vl.config import BuiltinDataConfig
from spark_vl.runio import write_jsonl_atomic

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
    "black": (10, 10, 10),
    "pink": (240, 120, 190),
}
SHAPES = ["circle", "square", "triangle"]


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    cx: int
    cy: int
    radius: int


@dataclass(frozen=True)
class Scene:
    """What to draw and what to ask; `key` identifies the scene across splits."""

    family: str
    question: str
    answer: str | None  # None: open-ended, scored by `rubric` in benchmarks only
    shapes: tuple[Shape, ...] = ()
    numbers: tuple[tuple[int, int, int], ...] = ()  # (value, x, y)
    second: tuple[Shape, ...] | None = None  # a second image's shapes: the question is about both
    frames: tuple[tuple[Shape, ...], ...] = ()  # a clip's frames: the question is about the motion
    rubric: tuple[str, ...] = ()  # an open-ended question's right answers

    @property
    def key(self) -> tuple:
        return (self.family, self.question, self.shapes, self.numbers, self.second, self.frames)


def _shape(rng: random.Random, size: int, kind: str, colour: str, radius: int,
           x_range: tuple[float, float] = (0.0, 1.0)) -> Shape:
    low = max(radius + 1, int(size * x_range[0]) + radius)
    high = min(size - radius - 1, int(size * x_range[1]) - radius)
    return Shape(kind, colour, rng.randint(low, max(low, high)), rng.randint(radius + 1, size - radius - 1), radius)


def colour_scene(rng: random.Random, size: int, difficulty: int) -> Scene:
    palette = list(COLOURS)[: 2 + 2 * difficulty]
    colour = rng.choice(palette)
    shape = _shape(rng, size, rng.choice(SHAPES), colour, rng.randint(size // 8, size // 4))
    return Scene("colour", "What colour is the shape?", colour, (shape,))


def count_scene(rng: random.Random, size: int, difficulty: int) -> Scene:
    count = rng.randint(1, 2 + difficulty)
    step = size // 4
    radius = step // 3
    cells = [(i, j) for i in range(4) for j in range(4)]
    rng.shuffle(cells)
    jitter = step // 2 - radius - 1  # shapes move inside their grid cell, so they never overlap

    def place(kind: str, colour: str, i: int, j: int) -> Shape:
        return Shape(kind, colour, i * step + step // 2 + rng.randint(-jitter, jitter),
                     j * step + step // 2 + rng.randint(-jitter, jitter), radius)

    shapes = [place("circle", rng.choice(["red", "blue"]), i, j) for i, j in cells[:count]]
    if difficulty >= 2:  # squares as distractors
        shapes += [place("square", "green", i, j) for i, j in cells[count: count + rng.randint(0, difficulty)]]
    return Scene("count", "How many circles are there?", str(count), tuple(shapes))


def position_scene(rng: random.Random, size: int, difficulty: int) -> Scene:
    side = rng.choice(["left", "right"])
    margin = {1: 0.35, 2: 0.2, 3: 0.08}[difficulty]
    x_range = (0.0, 0.5 - margin) if side == "left" else (0.5 + margin, 1.0)
    shape = _shape(rng, size, rng.choice(SHAPES), rng.choice(list(COLOURS)[:4]), size // 10, x_range)
    return Scene("position", "Is the shape on the left or the right?", side, (shape,))


def size_scene(rng: random.Random, size: int, difficulty: int) -> Scene:
    big = rng.choice(["red", "blue"])
    small = "blue" if big == "red" else "red"
    ratio = {1: 0.45, 2: 0.65, 3: 0.8}[difficulty]
    r_big = rng.randint(size // 7, size // 5)
    r_small = max(3, int(r_big * ratio))
    kind = rng.choice(SHAPES)
    left, right = (big, small) if rng.random() < 0.5 else (small, big)
    shapes = tuple(
        _shape(rng, size, kind, colour, r_big if colour == big else r_small, x_range)
        for colour, x_range in [(left, (0.0, 0.5)), (right, (0.5, 1.0))]
    )
    return Scene("size", "Which shape is bigger, the red one or the blue one?", big, shapes)


def arithmetic_scene(rng: random.Random, size: int, difficulty: int) -> Scene:
    top = {1: 4, 2: 9, 3: 9}[difficulty]
    a, b = rng.randint(0, top), rng.randint(0, top)
    numbers = ((a, size // 10 + rng.randint(0, size // 6), rng.randint(size // 10, size // 2)),
               (b, size // 2 + rng.randint(0, size // 6), rng.randint(size // 10, size // 2)))
    if difficulty == 3:
        return Scene("arithmetic", "What is the product of the two numbers?", str(a * b), numbers=numbers)
    return Scene("arithmetic", "What is the sum of the two numbers?", str(a + b), numbers=numbers)


def _circles(rng: random.Random, size: int, count: int, distractors: int) -> tuple[Shape, ...]:
    """`count` circles (and `distractors` green squares) in distinct cells of a 4 x 4 grid."""
    step = size // 4
    radius = step // 3
    cells = [(i, j) for i in range(4) for j in range(4)]
    rng.shuffle(cells)
    jitter = step // 2 - radius - 1

    def place(kind: str, colour: str, i: int, j: int) -> Shape:
        return Shape(kind, colour, i * step + step // 2 + rng.randint(-jitter, jitter),
                     j * step + step // 2 + rng.randint(-jitter, jitter), radius)

    circles = [place("circle", rng.choice(["red", "blue"]), i, j) for i, j in cells[:count]]
    return tuple(circles + [place("square", "green", i, j) for i, j in cells[count:count + distractors]])


def compare_scene(rng: random.Random, size: int, difficulty: int) -> Scene:
    """Two images: which has more circles (answer first or second; the counts come closer and
    squares distract at higher difficulty), or whether their shapes share a colour (yes or no;
    more colours to tell apart)."""
    if rng.random() < 0.5:
        top, gap = 2 + 2 * difficulty, {1: 2, 2: 1, 3: 1}[difficulty]
        more = rng.randint(1 + gap, top)
        fewer = rng.randint(max(1, more - 2 * gap - difficulty), more - gap)
        distractors = 0 if difficulty == 1 else rng.randint(0, difficulty)
        counts = (more, fewer) if rng.random() < 0.5 else (fewer, more)
        first, second = (_circles(rng, size, n, distractors) for n in counts)
        answer = "first" if counts[0] > counts[1] else "second"
        return Scene("compare", "Which image has more circles, the first or the second?", answer, first,
                     second=second)
    palette = list(COLOURS)[: 2 + 2 * difficulty]
    colour = rng.choice(palette)
    other = colour if rng.random() < 0.5 else rng.choice([c for c in palette if c != colour])
    radius = rng.randint(size // 8, size // 4)
    first = (_shape(rng, size, rng.choice(SHAPES), colour, radius),)
    second = (_shape(rng, size, rng.choice(SHAPES), other, radius),)
    return Scene("compare", "Are the shapes in the two images the same colour? Answer yes or no.",
                 "yes" if colour == other else "no", first, second=second)


def describe_scene(rng: random.Random, size: int, difficulty: int) -> Scene:
    """Two shapes of different colours, one in each half: name a colour you see. Either colour is
    right, so no single reference answer grades it; the rubric lists both."""
    palette = list(COLOURS)[: 2 + 2 * difficulty]
    colours = rng.sample(palette, 2)
    radius = rng.randint(size // 10, size // 6)
    shapes = tuple(_shape(rng, size, rng.choice(SHAPES), colour, radius, x_range)
                   for colour, x_range in zip(colours, [(0.0, 0.5), (0.5, 1.0)]))
    return Scene("describe", "Name a colour you see in the image.", None, shapes, rubric=tuple(sorted(colours)))


def open_ended_score(answer: str | None, rubric: list[str]) -> float:
    """The hidden score of an open-ended answer (benchmarks only, never a training reward): 1 when
    it names one of the rubric's right answers."""
    return float(answer is not None and answer.strip().lower() in rubric)


MOTION_FRAMES = 4
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def motion_scene(rng: random.Random, size: int, difficulty: int) -> Scene:
    """A dot crossing a clip of MOTION_FRAMES frames: which way does it move? Left or right at
    difficulty 1; up and down too, in smaller steps and beside a still square, above."""
    directions = ["left", "right"] if difficulty == 1 else list(DIRECTIONS)
    direction = rng.choice(directions)
    dx, dy = DIRECTIONS[direction]
    radius = size // 10
    step = size // {1: 6, 2: 8, 3: 12}[difficulty]
    travel = step * (MOTION_FRAMES - 1)
    low, high = radius + 1, size - radius - 1

    def start(d: int) -> int:
        """Where the dot may start on an axis it moves along by `d`, all its travel in the picture."""
        if d < 0:
            return rng.randint(low + travel, high)
        if d > 0:
            return rng.randint(low, high - travel)
        return rng.randint(low, high)

    x, y = start(dx), start(dy)
    colour = rng.choice(list(COLOURS)[:4])
    still = (Shape("square", "green", rng.randint(low, high), rng.randint(low, high), radius),) if difficulty == 3 \
        else ()
    frames = tuple((*still, Shape("circle", colour, x + dx * step * k, y + dy * step * k, radius))  # the dot on top
                   for k in range(MOTION_FRAMES))
    question = ("Does the dot move left or right?" if difficulty == 1 else
                "Which way does the dot move: left, right, up or down?")
    return Scene("motion", question, direction, frames=frames)


FAMILIES: dict[str, Callable[[random.Random, int, int], Scene]] = {
    "colour": colour_scene,
    "count": count_scene,
    "position": position_scene,
    "size": size_scene,
    "arithmetic": arithmetic_scene,
    "compare": compare_scene,
    "motion": motion_scene,
    "describe": describe_scene,
}

# The families whose questions make the tiny tokenizer's corpus. Fixed: a family added later
# leaves the tiny model, and every result measured with it, as they were (its words are spelt
# with the byte-level pieces the tokenizer already has).
CORPUS_FAMILIES = ("colour", "count", "position", "size", "arithmetic")


def render(scene: Scene, size: int) -> Image.Image:
    """The scene's (first) image."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        box = (s.cx - s.radius, s.cy - s.radius, s.cx + s.radius, s.cy + s.radius)
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(s.cx, s.cy - s.radius), (s.cx - s.radius, s.cy + s.radius),
                          (s.cx + s.radius, s.cy + s.radius)], fill=fill)
    if scene.numbers:
        font = ImageFont.load_default(size=size // 3)
        for value, x, y in scene.numbers:
            draw.text((x, y), str(value), fill=(0, 0, 0), font=font)
    return image


def render_images(scene: Scene, size: int) -> list[Image.Image]:
    """Every image of the scene, in the order the question names them (a clip's frames in order)."""
    if scene.frames:
        return [render(Scene(scene.family, scene.question, scene.answer, frame), size) for frame in scene.frames]
    if scene.second is None:
        return [render(scene, size)]
    return [render(scene, size), render(Scene(scene.family, scene.question, scene.answer, scene.second), size)]


def generate_scenes(families: list[str], difficulty: int, size: int, n: int, seed: int,
                    exclude: set[tuple] = frozenset()) -> list[Scene]:
    """`n` scenes cycling through `families`, none of whose keys is in `exclude`."""
    rng = random.Random(seed)
    scenes: list[Scene] = []
    attempts = 0
    while len(scenes) < n:
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"cannot draw {n} distinct scenes of {families}: lower n or raise difficulty")
        scene = FAMILIES[families[len(scenes) % len(families)]](rng, size, difficulty)
        if scene.key not in exclude:
            scenes.append(scene)
    return scenes


def make_dataset(out_dir: str | Path, cfg: BuiltinDataConfig) -> dict[str, Path]:
    """Render train and held-out splits as PNGs (a clip as a folder of frames) plus one JSONL
    manifest per split."""
    out = Path(out_dir)
    train = generate_scenes(cfg.families, cfg.difficulty, cfg.image_size, cfg.n_train, cfg.seed)
    held_out = generate_scenes(cfg.families, cfg.difficulty, cfg.image_size, cfg.n_eval,
                               cfg.seed + 1_000_003, exclude={s.key for s in train})
    manifests = {}
    for split, scenes in [("train", train), ("eval", held_out)]:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i, scene in enumerate(tqdm(scenes, desc=f"rendering {split}", unit="scene", leave=False)):
            images = render_images(scene, cfg.image_size)
            if scene.frames:
                refs = [f"videos/{split}/{i:06d}/{n:02d}.png" for n in range(len(images))]
                (out / refs[0]).parent.mkdir(parents=True, exist_ok=True)
                where = {"video": f"videos/{split}/{i:06d}"}
            else:
                refs = [f"images/{split}/{i:06d}.png"] if len(images) == 1 else [
                    f"images/{split}/{i:06d}-{n}.png" for n in range(1, len(images) + 1)]
                where = {"image": refs[0]} if len(refs) == 1 else {"images": refs}
            for image, ref in zip(images, refs):
                image.save(out / ref)
            rows.append({"id": f"{split}-{i:06d}", **where, "question": scene.question,
                         "answer": scene.answer, "family": scene.family, "difficulty": cfg.difficulty,
                         **({"rubric": list(scene.rubric)} if scene.rubric else {})})
        manifests[split] = out / f"{split}.jsonl"
        write_jsonl_atomic(manifests[split], rows)
    return manifests


def corpus_lines() -> list[str]:
    """Every question, answer and instruction the built-in tasks can produce (tokenizer corpus)."""
    rng = random.Random(0)
    lines = []
    for family in CORPUS_FAMILIES:
        make = FAMILIES[family]
        for difficulty in (1, 2, 3):
            for _ in range(40):
                scene = make(rng, 112, difficulty)
                lines.append(f"{scene.question} Answer with \\boxed{{}}. \\boxed{{{scene.answer}}}")
    lines += [f"The answer is \\boxed{{{c}}}." for c in COLOURS]
    lines += [f"\\boxed{{{n}}}" for n in range(100)]
    return lines
