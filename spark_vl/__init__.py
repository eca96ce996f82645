"""spark-vl: post-train vision-language models with SPARK (GRPO whose rollouts train a built-in judge)."""

__version__ = "0.1.0"
