"""Typed config of `qrdistill table`: one results table, as rows of one base run config.

A table config names a base run config (a run YAML, or a mapping written inline), an optional
`override` of its own that every row shares (to size a table to its budget without copying the base:
fewer training questions, fewer test questions), the rows, each an `override` deep-merged into the
base after the table's (mappings merge key by key; lists and scalars replace the base's value), the
seeds every row runs, and the rows the paired columns compare against: the
reference (plain QR-Distill by default) and the zero-shot baseline. Each row's merged config is
validated as a `RunConfig`; an error names the table row, the field, and the file and line the
value came from: the row's override in the table file, else the table's override, else the base
(its own file, or `base:` inline in the table file).

```yaml
base: configs/qrdistill.yaml
seeds: [0, 1, 2]
run_dir: runs/table_demo
rows:
  - {name: zero_shot, override: {stages: [evaluate], evaluate: {students: base}}}
  - {name: skd, override: {train: {method: skd}}}
  - {name: qrdistill}
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qrdistill.config import (
    UNION_TAGS,
    RunConfig,
    format_validation_error,
    parse_yaml,
    read_config_text,
    yaml_lines,
)
from qrdistill.errors import ConfigError

#: Row names become directory names under run_dir.
_ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Directories the table writes beside the rows.
RESERVED_ROW_NAMES = ("data", "table")
#: Fields the table sets for every row itself, and why a row may not.
TABLE_OWNED = {"run_dir": "the table runs each row in <run_dir>/<row>/seed-<s>/",
               "seeds": "every row runs the table's `seeds`"}


class TableRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The row's id: its directory <run_dir>/<name>/ and its name in the report.")
    label: str | None = Field(None, description="How the report names the row (default: its name).")
    override: dict[str, Any] = Field(
        default_factory=dict,
        description="Deep-merged into the base run config: mappings merge key by key, lists and scalars replace "
        "(e.g. {train: {method: skd}}, {train: {router: {mode: random}}}, or {stages: [evaluate], evaluate: "
        "{students: base}} for zero-shot).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ROW_NAME.match(v):
            raise ValueError(f"{v!r} is not a valid row name (letters, digits, '_' or '-', at most 64; it names a "
                             f"directory)")
        if v in RESERVED_ROW_NAMES:
            raise ValueError(f"{v!r} is reserved (the table writes <run_dir>/{v}/ itself); pick another name")
        return v

    @property
    def title(self) -> str:
        return self.label or self.name


class TableConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str | dict[str, Any] = Field(
        description="The run config every row starts from: a run YAML's path (relative to the working directory, "
        "like every path in a run config), or the run config written inline."
    )
    override: dict[str, Any] = Field(
        default_factory=dict,
        description="Deep-merged into the base before each row's own override, for every row: what the table "
        "changes in the base for all its rows (e.g. {tasks: [...]} to train on fewer questions).",
    )
    rows: list[TableRow] = Field(description="The table's rows, in report order.")
    # strict: YAML reads `seeds: [true]` as booleans, which a lax int would take as 1.
    seeds: list[Annotated[int, Field(strict=True)]] = Field(
        default_factory=lambda: [0, 1, 2],
        description="Training seeds; every row runs each in <run_dir>/<row>/seed-<s>/ (the base's `seeds` is "
        "ignored).",
    )
    run_dir: str = Field("runs/table", description="Directory of the whole table: rows, shared data, report.")
    reference: str | None = Field(
        None, description="Row the `vs reference` columns compare against (default: the one row that trains plain "
        "QR-Distill: learned router, collaboration, quality filter, all data)."
    )
    zero_shot: str | None = Field(
        None, description="Row the `vs zero-shot` columns compare against (default: the one row without a train "
        "stage). Its base models' predictions are compared with the trained students of the same model."
    )

    @field_validator("rows")
    @classmethod
    def _rows(cls, v: list[TableRow]) -> list[TableRow]:
        if not v:
            raise ValueError("a table needs at least one row")
        first: dict[str, int] = {}
        for i, row in enumerate(v):
            if row.name in first:
                raise ValueError(f"rows {first[row.name]} and {i} are both named {row.name!r}; names must be unique")
            first[row.name] = i
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError("give distinct seeds, e.g. [0, 1, 2]")
        return v

    @model_validator(mode="after")
    def _named_rows(self) -> TableConfig:
        names = [r.name for r in self.rows]
        for fld in ("reference", "zero_shot"):
            value = getattr(self, fld)
            if value is not None and value not in names:
                raise ValueError(f"{fld}: {value!r} names no row (rows: {', '.join(names)})")
        return self


@dataclass
class ResolvedTable:
    """A validated table: its config, each row's run config (seeds unset, run_dir <run_dir>/<row>), and the
    reference and zero-shot rows (None when the table has none)."""

    config: TableConfig
    rows: dict[str, Any]
    reference: str | None
    zero_shot: str | None
    source: str = "table config"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def seeds(self) -> list[int]:
        return list(self.config.seeds)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in: nested mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def is_plain_qrdistill(cfg: Any) -> bool:
    """The paper's full method: learned router, collaboration, quality filter, every training question."""
    tc = cfg.train
    return ("train" in cfg.stages and tc.method == "qrdistill" and not tc.single_student
            and tc.router.mode == "learned" and (tc.lambda_mutual or 0) > 0 and tc.frozen_peer is None
            and tc.data_fraction == 1.0 and cfg.filter.enabled)


def load_table_config(path: str | Path, run_dir: str | None = None) -> ResolvedTable:
    """Load a table config and validate every row's merged run config (`run_dir` overrides the file's)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: table config file not found" if not p.exists() else f"{p}: not a file")
    text = read_config_text(p)
    data = parse_yaml(p, text)
    if run_dir is not None:
        data["run_dir"] = run_dir
    try:
        table = TableConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(p), text)) from None
    lines = yaml_lines(text)

    if isinstance(table.base, str):
        base_path = Path(table.base)
        if not base_path.is_file():
            raise ConfigError(f"{p}:{lines.get(('base',), 1)}: config field base: {base_path}: run config file "
                              f"not found (a path relative to the working directory)")
        base_text = read_config_text(base_path)
        base_data = parse_yaml(base_path, base_text)
        base_src, base_lines, base_prefix = str(base_path), yaml_lines(base_text), ()
    else:
        base_data, base_src, base_lines, base_prefix = table.base, str(p), lines, ("base",)

    for owned, why in TABLE_OWNED.items():
        if owned in table.override:
            raise ConfigError(f"{p}:{lines.get(('override', owned), lines.get(('override',), 1))}: config field "
                              f"override.{owned}: {why}; remove it")
    shared = deep_merge(base_data, table.override)
    resolved: dict[str, Any] = {}
    for i, row in enumerate(table.rows):
        for owned, why in TABLE_OWNED.items():
            if owned in row.override:
                raise ConfigError(f"{p}:{lines.get(('rows', i, 'override', owned), lines.get(('rows', i), 1))}: "
                                  f"table row {row.name!r}: config field rows.{i}.override.{owned}: {why}; remove it")
        merged = deep_merge(shared, row.override)
        merged["run_dir"] = str(Path(table.run_dir) / row.name)
        merged["seeds"] = None
        try:
            cfg = RunConfig.model_validate(merged)
        except ValidationError as e:
            raise ConfigError(_row_error(e, i, row, table.override, str(p), lines, base_src, base_lines,
                                         base_prefix)) from None
        except RecursionError:
            raise ConfigError(f"{p}: table row {row.name!r}: values nested too deeply") from None
        where = f"{p}:{lines.get(('rows', i), 1)}: table row {row.name!r}"
        if "evaluate" not in cfg.stages:
            raise ConfigError(f"{where}: config field stages: the row runs no evaluate stage, so it has no accuracy "
                              f"to put in the table; add evaluate")
        resolved[row.name] = cfg

    reference = table.reference or _only(p, lines, "reference", [n for n, c in resolved.items()
                                                                  if is_plain_qrdistill(c)])
    zero_shot = table.zero_shot or _only(p, lines, "zero_shot", [n for n, c in resolved.items()
                                                                 if "train" not in c.stages])
    if reference is not None and "train" not in resolved[reference].stages:
        raise ConfigError(f"{p}:{lines.get(('reference',), 1)}: config field reference: row {reference!r} trains "
                          f"nothing; the reference must be a trained row")
    if zero_shot is not None and "train" in resolved[zero_shot].stages:
        raise ConfigError(f"{p}:{lines.get(('zero_shot',), 1)}: config field zero_shot: row {zero_shot!r} trains; "
                          f"the zero-shot row evaluates the base models only (stages without train)")
    return ResolvedTable(table, resolved, reference, zero_shot, str(p), {r.name: r.title for r in table.rows})


def _only(p: Path, lines: dict[tuple[Any, ...], int], fld: str, candidates: list[str]) -> str | None:
    if len(candidates) > 1:
        raise ConfigError(f"{p}: config field {fld}: rows {', '.join(repr(c) for c in candidates)} all qualify as "
                          f"the {fld.replace('_', '-')} row; set {fld}: <row name>")
    return candidates[0] if candidates else None


def _has_path(data: Any, path: tuple[Any, ...]) -> bool:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return True


def _row_error(err: ValidationError, index: int, row: TableRow, shared: dict[str, Any], table_src: str,
               table_lines: dict[tuple[Any, ...], int], base_src: str, base_lines: dict[tuple[Any, ...], int],
               base_prefix: tuple[Any, ...]) -> str:
    """Each error at the line its value came from: the row's override when it sets the field (or a mapping
    above it), else the table's override, else the base; the row's own line when none names it (a rule
    across fields)."""
    msgs = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        loc = tuple(x for x in loc if x not in UNION_TAGS)
        fld = ".".join(str(x) for x in loc) or "(top level)"
        src, line = table_src, table_lines.get(("rows", index))
        from_row = next((loc[:n] for n in range(len(loc), 0, -1) if _has_path(row.override, loc[:n])), None)
        from_table = next((loc[:n] for n in range(len(loc), 0, -1) if _has_path(shared, loc[:n])), None)
        if from_row is not None:
            line = table_lines.get(("rows", index, "override", *from_row), line)
        elif from_table is not None:
            line = table_lines.get(("override", *from_table), line)
        else:
            hit = next((base_prefix + loc[:n] for n in range(len(loc), 0, -1) if base_prefix + loc[:n] in base_lines),
                       None)
            if hit is not None:
                src, line = base_src, base_lines[hit]
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        msgs.append(f"{src}:{line}: table row {row.name!r}: config field {fld}: {msg}" if line else
                    f"{src}: table row {row.name!r}: config field {fld}: {msg}")
    return "; ".join(msgs)


__all__ = ["ResolvedTable", "TableConfig", "TableRow", "deep_merge", "is_plain_qrdistill", "load_table_config"]
