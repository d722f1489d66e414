"""Reinforcement learning after distillation (issue 11): reward functions, step extractors and their
cached reward-model calls, ready for a GRPO stage to call.

Nothing is imported here: `qrdistill.rl.rewards` holds the reward registry, `qrdistill.rl.steps_claims`
and `qrdistill.rl.steps_llm` the two step extractors of the structure reward, `qrdistill.rl.caller` the
store-backed caller every reward-model call goes through, `qrdistill.rl.total` the weighted sum.
"""
