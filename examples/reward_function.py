"""An example of your own task reward: `reward.function: examples/reward_function.py:reward`.

spark-vl calls it in its grading workers as reward(response, answer, prompt) for every task and
reflection response, under `rollout.verify_timeout_s` (a hang or an exception scores 0 and is
counted as `timeout` / `error`). `prompt` is the prompt record as a dict (question, images,
kind, ...). Return a number in [0, 1]. Judge replies keep the built-in verdict reward.
"""

from spark_vl.verify import extract_answer, normalise


def reward(response: str, answer: str, prompt: dict | None) -> float:
    """Full credit for the exact answer in a well-formed box; half for the right word elsewhere."""
    boxed = extract_answer(response)
    if boxed is not None and normalise(boxed) == normalise(answer):
        return 1.0
    return 0.5 if normalise(answer) in normalise(response) else 0.0
