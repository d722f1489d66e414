"""lm-evaluation-harness bridge (the optional `lmeval` extra): lm_eval's own BBH Date and GSM8K tasks on
the project's local benchmark files, so an exported student gets the harness's number on the questions
`qrdistill evaluate` scores. See `qrdistill.lmeval.bridge`."""

from qrdistill.lmeval.bridge import DEFAULT_TASKS, LOCAL_TASKS, evaluate_model, lm_eval_command, write_tasks

__all__ = ["DEFAULT_TASKS", "LOCAL_TASKS", "evaluate_model", "lm_eval_command", "write_tasks"]
