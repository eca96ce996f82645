"""Training: the GRPO objective, the joint SPARK step on DeepSpeed, LoRA, the warm-up, launched workers."""
