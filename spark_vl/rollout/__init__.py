"""Rollout engines: sample responses to image prompts behind one interface."""
