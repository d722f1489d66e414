"""The student's prompt, shared by training and evaluation.

The paper tests students zero-shot with a simple chain-of-thought
instruction; training on exactly the same prompt means what a student learns
is what evaluation asks of it.
"""

from __future__ import annotations

from qrdistill.tasks.base import Task

STUDENT_TEMPLATE = "Question: {question}\n{instruction}\nAnswer: Let's think step by step.\n"


def student_prompt(task: Task, question_text: str) -> str:
    """`question_text` is `task.prompt(record)` (stored as `question` in paths.jsonl)."""
    return STUDENT_TEMPLATE.format(question=question_text.strip(), instruction=task.answer_instruction)
