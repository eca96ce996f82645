"""Pairwise preference rows in the VL-RewardBench schema, to measure a judge on people's choices.

A row: `id`, `query`, `image` (a path relative to the file, or a dataset image `{"bytes": ...}`),
`response` (two candidate answers) and `human_ranking` (their ranks: `[0, 1]` when people
preferred the first, `[1, 0]` the second). JSONL, JSON, Parquet or a `datasets` folder, as the
task loaders read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spark_vl.data.loaders import DatasetError, _BadRowError, _raw_rows

FIX = ('a row needs "query", "image", "response": [two answers] and "human_ranking": [0, 1] or [1, 0] '
       "(lower is preferred)")


@dataclass(frozen=True)
class PreferencePair:
    id: str
    image: str
    query: str
    responses: tuple[str, str]
    preferred: int  # 0: people preferred the first response, 1: the second


def load_preference_pairs(path: str | Path, image_dir: Path) -> list[PreferencePair]:
    """Every row of `path`; images given as bytes are written to `image_dir`. The first bad row
    stops it with its number and what a row needs."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    pairs = []
    for number, row in _raw_rows(path, "test"):
        try:
            if isinstance(row, _BadRowError):
                raise ValueError(row.detail)
            responses, ranking = row["response"], row["human_ranking"]
            if len(responses) != 2 or sorted(ranking) != [0, 1]:
                raise ValueError("two responses with distinct ranks 0 and 1 are needed")
            image = row["image"]
            if isinstance(image, dict) and image.get("bytes"):
                image_dir.mkdir(parents=True, exist_ok=True)
                target = image_dir / f"{number}.png"
                target.write_bytes(image["bytes"])
                image = str(target)
            else:
                image = str(path.parent / str(image.get("path") if isinstance(image, dict) else image))
            if not Path(image).is_file():
                raise ValueError(f"image {image} does not exist")
            pairs.append(PreferencePair(str(row.get("id", number)), image, str(row["query"]),
                                        (str(responses[0]), str(responses[1])), list(ranking).index(0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(f"{path} row {number}: {exc!r}; {FIX}") from None
    return pairs
