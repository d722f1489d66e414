"""Evaluation helpers: batched greedy generation and accuracy statistics."""
