"""Reasoning-style templates (paper Figure 2) in a registry.

Each template holds `{question}`; the task's answer instruction is appended
so every style ends in an extractable final answer. Users add styles in
config (`generate.custom_styles`).
"""

from __future__ import annotations

import re

from qrdistill.errors import ConfigError

#: The only placeholder `render` fills in a style template.
PLACEHOLDERS = ("question",)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LATEX_BEFORE = re.compile(r"(?:\\[A-Za-z]+|[}^_])$")

STYLES: dict[str, str] = {
    "vanilla": "Reason to solve the problem:\n{question}",
    "cot": (
        "{question}\n\nLet's reason step by step, writing each reasoning step clearly before giving the final answer."
    ),
    "tot": (
        "Think in a tree of thoughts: outline multiple solution paths and choose the most promising one to derive "
        "the answer.\n{question}"
    ),
    "program": "Use code to solve the following problem and print the final answer.\n{question}",
    "fact": "First retrieve some relevant facts from your knowledge, then use them to reason to the final answer.\n{question}",
    "backward": (
        "Use forward reasoning to propose a candidate answer, then backward reasoning to verify it and provide the "
        "final verified answer.\n{question}"
    ),
}

#: Long names accepted as aliases in configs and shown in plots.
STYLE_TITLES = {
    "vanilla": "Vanilla",
    "cot": "Chain-of-Thought",
    "tot": "Tree-of-Thought",
    "program": "Program",
    "fact": "Fact Retrieval",
    "backward": "Backward",
}


def resolve_styles(names: list[str], custom: dict[str, str] | None = None) -> dict[str, str]:
    """Name -> template for the configured styles; unknown names are a config error."""
    table = {**STYLES, **(custom or {})}
    out = {}
    for i, name in enumerate(names):
        if name not in table:
            raise ConfigError(
                f"config field generate.styles.{i}: unknown reasoning style {name!r} "
                f"(known: {', '.join(sorted(table))}; add your own under generate.custom_styles)"
            )
        out[name] = table[name]
    return out


def unknown_placeholders(template: str, known: tuple[str, ...] = PLACEHOLDERS) -> list[str]:
    """`{name}` fields of `template` that nothing fills in (they would reach the model literally).

    A brace group right after a LaTeX command, another group or a sub/superscript
    (`\\boxed{answer}`, `\\frac{a}{b}`, `x^{n}`) is LaTeX a math prompt means to send, not a placeholder.
    """
    return sorted({
        f"{{{m.group(1)}}}"
        for m in _PLACEHOLDER.finditer(template)
        if m.group(1) not in known and not _LATEX_BEFORE.search(template, 0, m.start())
    })


def render(template: str, question: str, answer_instruction: str) -> str:
    return template.replace("{question}", question).rstrip() + "\n\n" + answer_instruction
