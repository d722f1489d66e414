"""What teacher and judge calls cost: prices, estimates before a run, a budget during one.

Prices come only from the run config's `prices` table (USD per million tokens, per model name as the
backend config spells it); nothing here knows or guesses a provider's price. Without a price a model's
calls are counted in tokens only.

- `call_cost` prices one call's usage. Cached input tokens (the part of the prompt a provider reports
  as served from its prompt cache, stored as `cached_tokens` in the completion's meta) are charged at
  `cached_input` when given, else at `input`.
- `estimate` projects the calls a stage would issue (`--dry-run`): the keys not yet stored `ok`, their
  input tokens from the prompts (`token_counter`: the teacher's own tokenizer when one is known, else a
  stated approximation, calibrated on stored calls when there are some) and their output tokens from
  stored calls of the same task and style, else `max_tokens` as an upper bound.
- `BudgetGate` wraps a backend so a stage stops before a call could take the total past its budget:
  each request's worst case (estimated input + `max_tokens` output) is reserved before it is handed to
  the backend, so calls in flight count against the budget, and the budget counts every call the store
  holds for that stage, earlier runs included. A rerun with a larger budget asks only what is missing.
- The store is read here without writing anything (`stored_calls`, `stored_ok_usage`): a dry run and the
  report leave the run directory exactly as they found it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError, DataError, QRDistillError

log = logging.getLogger(__name__)

PER_TOKENS = 1_000_000
#: The approximation used when no tokenizer of the model is known: English prose averages about four
#: characters per token in the BPE vocabularies of the hosted models.
CHARS_PER_TOKEN = 4
#: Stored calls used to calibrate an input estimate against what the server counted.
CALIBRATION_SAMPLE = 200
#: Which stage makes the calls of each store kind.
STAGE_OF_KIND = {"teacher": "generate", "judge": "filter"}


class BudgetExhausted(QRDistillError):
    """A stage stopped before a call could exceed its `budget_usd`; what was answered is stored."""


# ---------------------------------------------------------------- prices


def call_cost(price: Any, prompt_tokens: int | None, completion_tokens: int | None,
              cached_tokens: int | None = 0) -> float:
    """USD for one call. `cached_tokens` are part of `prompt_tokens` (as the OpenAI API reports them)."""
    prompt = max(0, int(prompt_tokens or 0))
    cached = min(prompt, max(0, int(cached_tokens or 0)))
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return ((prompt - cached) * price.input + cached * cached_rate
            + max(0, int(completion_tokens or 0)) * price.output) / PER_TOKENS


def price_of(prices: dict[str, Any] | None, model: str) -> Any | None:
    return (prices or {}).get(model)


def no_price(model: str) -> str:
    return f"no price for model {model!r} in `prices`"


def require_price(prices: dict[str, Any] | None, model: str, budget_field: str, model_field: str) -> Any:
    """The price a budget needs; without one the budget cannot be kept (the config validates this too)."""
    price = price_of(prices, model)
    if price is None:
        raise ConfigError(
            f"config field {budget_field}: a budget needs the price of the model it pays for, and there is "
            f"{no_price(model)} ({model_field}); add prices: {{{model}: {{input: <USD per 1M input tokens>, "
            f"output: <USD per 1M output tokens>}}}}"
        )
    return price


def usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:.4f}" if x < 100 else f"${x:,.2f}"


# ---------------------------------------------------------------- the store, read only


def _connect_readonly(path: Path) -> sqlite3.Connection | None:
    """A connection that writes nothing, or None when there is no store.

    `mode=ro` still creates the `-wal` and `-shm` files beside a WAL database and leaves them; so a store
    closed cleanly (no `-wal` file: everything is in the main file) is opened `immutable`, which touches
    nothing, and one with a `-wal` file (a writer is open, or one was killed) is read through it.
    """
    if not path.is_file():
        return None
    wal = path.with_name(path.name + "-wal")
    uri = path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?immutable=1")
    try:
        db = sqlite3.connect(uri, uri=True, timeout=30.0)
        db.row_factory = sqlite3.Row
        db.execute("SELECT 1 FROM completions LIMIT 1").fetchall()
    except sqlite3.Error as e:
        raise DataError(f"{path}: not a readable completion store ({e})") from None
    return db


#: Completion.meta field: what the budget charged a call whose server reported no usage (its worst case),
#: so a later run's spending counts it too.
UNMETERED_CHARGE = "unmetered_charge_usd"


def _meta_number(meta: str | None, name: str) -> float:
    try:
        value = json.loads(meta).get(name) if meta else None
    except (ValueError, AttributeError):
        return 0
    return value if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def _cached_tokens(meta: str | None) -> int:
    return int(_meta_number(meta, "cached_tokens"))


def stored_calls(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Every call the store logged (one row per call the backend answered, ok or error), with the model of
    its completion and its cached input tokens; [] without a store."""
    db = _connect_readonly(Path(path))
    if db is None:
        return []
    where, args = ("WHERE c.kind = ?", (kind,)) if kind else ("", ())
    try:
        rows = db.execute(
            f"""SELECT c.key, c.kind, c.backend, c.status, c.prompt_tokens, c.completion_tokens,
                       p.model, p.meta, p.status AS final_status
                FROM calls c LEFT JOIN completions p ON p.key = c.key {where} ORDER BY c.id""",
            args,
        ).fetchall()
    except sqlite3.Error as e:
        raise DataError(f"{path}: not a readable completion store ({e})") from None
    finally:
        db.close()
    out = []
    for r in rows:
        # The completion's meta belongs to its ok call; a failed attempt before it had no cache hits reported.
        ok = r["status"] == "ok"
        cached = _cached_tokens(r["meta"]) if ok else 0
        out.append({"key": r["key"], "kind": r["kind"], "backend": r["backend"], "status": r["status"],
                    "model": r["model"] or r["backend"].split(":", 1)[-1], "prompt_tokens": r["prompt_tokens"] or 0,
                    "completion_tokens": r["completion_tokens"] or 0, "cached_tokens": cached,
                    "unmetered": ok and (r["prompt_tokens"] is None or r["completion_tokens"] is None),
                    "charged_usd": _meta_number(r["meta"], UNMETERED_CHARGE) if ok else 0})
    return out


def stored_ok_usage(path: str | Path, keys: Iterable[str]) -> dict[str, dict[str, int]]:
    """key -> {prompt_tokens, completion_tokens} for those of `keys` stored `ok` (they are not asked again)."""
    db = _connect_readonly(Path(path))
    if db is None:
        return {}
    keys = list(dict.fromkeys(keys))
    out: dict[str, dict[str, int]] = {}
    try:
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for r in db.execute(
                f"SELECT key, prompt_tokens, completion_tokens FROM completions WHERE status = 'ok' "
                f"AND text IS NOT NULL AND key IN ({','.join('?' * len(chunk))})", chunk,
            ):
                out[r["key"]] = {"prompt_tokens": r["prompt_tokens"] or 0,
                                 "completion_tokens": r["completion_tokens"] or 0}
    except sqlite3.Error as e:
        raise DataError(f"{path}: not a readable completion store ({e})") from None
    finally:
        db.close()
    return out


def stored_spend(path: str | Path, kind: str, prices: dict[str, Any] | None) -> tuple[float, dict[str, int]]:
    """USD of every stored call of `kind` whose model has a price, and the count of calls per unpriced model.

    A call the server reported no usage for costs what a budget charged it (its worst case, stored with
    the completion); without one (made with no budget set) its cost is unknown and it counts as unpriced.
    """
    total, unpriced = 0.0, defaultdict(int)
    for c in stored_calls(path, kind):
        price = price_of(prices, c["model"])
        if price is not None and c["unmetered"]:
            if c["charged_usd"] or (price.input == 0 and price.output == 0):
                total += c["charged_usd"]
                continue
            price = None
        if price is None:
            unpriced[c["model"]] += 1
            continue
        total += call_cost(price, c["prompt_tokens"], c["completion_tokens"], c["cached_tokens"])
    return total, dict(unpriced)


# ---------------------------------------------------------------- input tokens


@dataclass
class TokenCounter:
    """Counts a request's input tokens; `method` says how, for the user."""

    method: str
    exact: bool
    count: Callable[[Sequence[dict[str, str]]], int]

    def __call__(self, messages: Sequence[dict[str, str]]) -> int:
        return self.count(messages)


def _plain(messages: Sequence[dict[str, str]]) -> str:
    from qrdistill.backends.openai_backend import render_plain_prompt

    return render_plain_prompt(messages)


def approximate_counter() -> TokenCounter:
    return TokenCounter(f"approximation: characters / {CHARS_PER_TOKEN}", False,
                        lambda m: math.ceil(len(_plain(m)) / CHARS_PER_TOKEN))


def _tokenizer_counter(path: str, chat: bool, field_name: str) -> TokenCounter:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"config field {field_name}: cannot load a tokenizer from {path!r} "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    templated = chat and bool(getattr(tok, "chat_template", None))

    def count(messages: Sequence[dict[str, str]]) -> int:
        if templated:
            text = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            return len(tok(text, add_special_tokens=False)["input_ids"])
        return len(tok(_plain(messages), add_special_tokens=True)["input_ids"])

    how = "its chat template" if templated else "the plain prompt"
    return TokenCounter(f"tokenizer {path} ({how})", True, count)


def _tiktoken_counter(model: str) -> TokenCounter | None:
    """tiktoken's encoding of a hosted OpenAI model, when tiktoken is installed and knows the model.

    Its encodings are files fetched on first use; offline and not yet cached, it is not used."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        enc = tiktoken.encoding_for_model(model)
        enc.encode("probe")
    except Exception:  # noqa: BLE001  (an unknown model, or an encoding that cannot be fetched offline)
        return None

    def count(messages: Sequence[dict[str, str]]) -> int:
        # OpenAI's documented chat framing: 3 tokens per message and 3 to prime the reply.
        return sum(len(enc.encode(str(m.get("content") or ""))) + 3 for m in messages) + 3

    return TokenCounter(f"tiktoken {enc.name}", True, count)


def token_counter(backend_config: Any, field_name: str) -> TokenCounter:
    """The best input-token counter known for a backend: its `tokenizer` (a local tokenizer directory),
    the hf backend's own model directory, tiktoken for an OpenAI-hosted model when installed, else
    characters / 4."""
    chat = getattr(backend_config, "mode", None) == "chat" or bool(getattr(backend_config, "chat_template", False))
    path = getattr(backend_config, "tokenizer", None)
    if path:
        return _tokenizer_counter(path, chat, f"{field_name}.tokenizer")
    model = str(getattr(backend_config, "model", "") or "")
    if backend_config.kind in ("hf", "vllm") and model and Path(model).is_dir():
        return _tokenizer_counter(model, chat, f"{field_name}.model")
    if backend_config.kind == "openai" and model:
        counter = _tiktoken_counter(model)
        if counter is not None:
            return counter
    return approximate_counter()


def key_backend(config: Any, field_name: str) -> Any:
    """A backend good for request keys, without calls: a dry run needs no API key.

    The openai backend reads its key when built, and refuses to be built without it; for keys it needs
    only its config, so without a key it is built bare (it could not issue a call).
    """
    from qrdistill.backends import get_backend
    from qrdistill.backends.base import BACKENDS, Backend
    from qrdistill.backends.openai_backend import is_local_url

    if config.kind == "openai" and config.model and not is_local_url(config.base_url):
        var = config.api_key_env
        if not (var and os.environ.get(var)):
            cls = BACKENDS.get("openai", f"{field_name}.kind")
            backend = cls.__new__(cls)
            Backend.__init__(backend, config)
            return backend
    return get_backend(config, field_name)


# ---------------------------------------------------------------- estimates (--dry-run)


@dataclass
class PlannedCall:
    """One request a stage would make: its key, the (task, style) it belongs to, its prompt and cap."""

    key: str
    task: str
    style: str
    messages: list[dict[str, str]]
    max_tokens: int


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs)


def estimate(calls: Sequence[PlannedCall], stored: dict[str, dict[str, int]], counter: TokenCounter,
             price: Any | None) -> dict[str, Any]:
    """Projected calls, tokens and cost of `calls` (duplicate keys are one call; stored ones cost nothing).

    Input tokens: `counter` on each prompt, scaled by actual/estimated over stored calls of the same
    stage when there are some. Output tokens: the mean of stored calls of the same task and style, else
    of the same style, else `max_tokens` (an upper bound).
    """
    unique: dict[str, PlannedCall] = {}
    for c in calls:
        unique.setdefault(c.key, c)
    done = [c for c in unique.values() if c.key in stored]
    pending = [c for c in unique.values() if c.key not in stored]

    sample = [c for c in done if stored[c.key]["prompt_tokens"] > 0][:CALIBRATION_SAMPLE]
    est_sum = sum(counter(c.messages) for c in sample)
    scale = sum(stored[c.key]["prompt_tokens"] for c in sample) / est_sum if sample and est_sum else 1.0
    method = counter.method
    if sample and est_sum:
        method += f", x {scale:.3f} to match the {len(sample)} stored calls' reported prompt tokens"

    by_group: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_style: dict[str, list[int]] = defaultdict(list)
    for c in done:
        n = stored[c.key]["completion_tokens"]
        by_group[(c.task, c.style)].append(n)
        by_style[c.style].append(n)

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for c in pending:
        g = (c.task, c.style)
        if g not in rows:
            if by_group.get(g):
                out, source = _mean(by_group[g]), f"stored, same task+style (n={len(by_group[g])})"
            elif by_style.get(c.style):
                out, source = _mean(by_style[c.style]), f"stored, same style (n={len(by_style[c.style])})"
            else:
                out, source = None, "max_tokens (upper bound)"
            rows[g] = {"task": c.task, "style": c.style, "calls": 0, "input_tokens": 0, "output_tokens": 0,
                       "output_from": source, "_mean_out": out, "cost_usd": 0.0 if price else None,
                       "max_cost_usd": 0.0 if price else None}
        r = rows[g]
        n_in = math.ceil(counter(c.messages) * scale)
        n_out = c.max_tokens if r["_mean_out"] is None else min(c.max_tokens, math.ceil(r["_mean_out"]))
        r["calls"] += 1
        r["input_tokens"] += n_in
        r["output_tokens"] += n_out
        if price is not None:
            r["cost_usd"] += call_cost(price, n_in, n_out)
            r["max_cost_usd"] += call_cost(price, n_in, c.max_tokens)
    out_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows.values()]
    total = {k: sum(r[k] for r in out_rows) for k in ("calls", "input_tokens", "output_tokens")}
    return {
        "requests": len(calls),
        "unique_requests": len(unique),
        "stored": len(done),
        **total,
        "input_method": method,
        "input_exact": counter.exact,
        "cost_usd": sum(r["cost_usd"] for r in out_rows) if price is not None else None,
        "max_cost_usd": sum(r["max_cost_usd"] for r in out_rows) if price is not None else None,
        "rows": out_rows,
    }


def format_estimate(stage: str, backend_label: str, model: str, est: dict[str, Any], price: Any | None,
                    budget: dict[str, Any] | None = None) -> str:
    """The dry run's report: a table per task x style, then totals, the price and the budget."""
    lines = [f"{stage} --dry-run: {backend_label} (no call issued, nothing written)",
             f"  requests: {est['unique_requests']}, already stored: {est['stored']} (not asked again); "
             f"calls that would be issued: {est['calls']}"]
    if est["rows"]:
        head = ["task", "style", "calls", "input tokens", "output tokens", "output from", "cost USD"]
        body = [[r["task"], r["style"], f"{r['calls']:,}", f"{r['input_tokens']:,}", f"{r['output_tokens']:,}",
                 r["output_from"], usd(r["cost_usd"])] for r in est["rows"]]
        body.append(["total", "", f"{est['calls']:,}", f"{est['input_tokens']:,}", f"{est['output_tokens']:,}", "",
                     usd(est["cost_usd"])])
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        right = {2, 3, 4, 6}

        def fmt(row: list[str]) -> str:
            return "  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                    for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

        lines += ["", fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body), ""]
    lines.append(f"  input tokens: {est['input_method']}")
    lines.append("  output tokens: per 'output from': the mean of stored calls of the same task and style (or "
                 "style), else max_tokens (an upper bound)")
    if price is None:
        lines.append(f"  cost: {no_price(model)}: tokens only")
    else:
        cached = "" if price.cached_input is None else f", ${price.cached_input:g} cached input"
        lines.append(f"  cost: {usd(est['cost_usd'])} projected, {usd(est['max_cost_usd'])} if every reply "
                     f"runs to max_tokens (prices.{model}: ${price.input:g} input, ${price.output:g} output per "
                     f"1M tokens{cached})")
    if budget:
        left = budget["budget_usd"] - budget["spent_usd"]
        verdict = ("fits" if est["max_cost_usd"] is not None and est["max_cost_usd"] <= left
                   else "may stop the stage before the last call (calls are reserved at their max_tokens cost)")
        lines.append(f"  budget: {budget['field']} {usd(budget['budget_usd'])}, spent by stored calls "
                     f"{usd(budget['spent_usd'])}, {usd(max(0.0, left))} left: {verdict}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the budget during a run


@dataclass
class BudgetGate:
    """A backend whose calls never take the stage's spending past `budget` (USD).

    Requests are handed to the wrapped backend in windows: the longest run of the pending requests whose
    worst-case costs (estimated input tokens + `max_tokens` output tokens), reserved together, fit in
    what is left; every request of a window may be in flight at once. When a window is answered the
    actual costs replace the reservations and the next window is cut. When not even the next request
    fits, the gate stops: the rest are never issued, and `run_cached` leaves them unanswered. While the
    input count is an approximation, the first window holds at most `probe` requests and later ones
    scale the estimate by what the server reported (never below 1x). So the reservation is a bound
    once the server has reported; in that first window an underestimated prompt can overshoot the
    budget by at most its `probe` requests' underestimate.
    Everything else (key, label, config, close) is the wrapped backend's.
    """

    inner: Any
    budget: float
    spent: float
    price: Any
    counter: TokenCounter
    probe: int = 8
    spent_before: float = 0.0
    issued: int = 0
    not_issued: list[Any] = field(default_factory=list)
    next_cost: float | None = None
    unreported: int = 0
    _seen_in: int = 0
    _est_in: int = 0
    _max_out: int = 0

    def __post_init__(self) -> None:
        self.spent_before = self.spent

    def __getattr__(self, name: str) -> Any:
        # Only reached for what the dataclass lacks: the wrapped backend's attributes.
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def stopped(self) -> bool:
        return bool(self.not_issued)

    def _scale(self) -> float:
        return max(1.0, self._seen_in / self._est_in) if self._est_in else 1.0

    def worst_case(self, req: Any) -> tuple[float, int]:
        est = self.counter(req.messages)
        cap = int(req.params.get("max_tokens") or self.inner.config.max_tokens)
        return call_cost(self.price, math.ceil(est * self._scale()), max(cap, self._max_out)), est

    def generate(self, requests: Sequence[Any], on_result: Callable[[Any, Any], None],
                 progress: Callable[[int], None] | None = None) -> None:
        queue = list(requests)
        reserved_for: dict[int, tuple[float, int]] = {}

        def counted(req: Any, comp: Any) -> None:
            reserved, est = reserved_for.pop(id(req), (0.0, 0))
            if comp.ok and (comp.prompt_tokens is None or comp.completion_tokens is None):
                # A server that reports no usage cannot be priced; its reservation is the only bound known.
                if not self.unreported:
                    log.warning("budget: the server reported no token usage; each such call is charged its "
                                "worst case (%s)", usd(reserved))
                self.unreported += 1
                self.spent += reserved
                comp.meta = {**(comp.meta or {}), UNMETERED_CHARGE: reserved}
            else:
                cached = (comp.meta or {}).get("cached_tokens") if comp.ok else 0
                self.spent += call_cost(self.price, comp.prompt_tokens, comp.completion_tokens,
                                        cached if isinstance(cached, int) else 0)
            self.issued += 1
            if comp.prompt_tokens and est:
                self._seen_in += comp.prompt_tokens
                self._est_in += est
            self._max_out = max(self._max_out, comp.completion_tokens or 0)
            on_result(req, comp)

        i = 0
        while i < len(queue):
            left = self.budget - self.spent
            window, reserved = [], 0.0
            cap = self.probe if not self.counter.exact and not self._est_in else len(queue)
            while i < len(queue) and len(window) < cap:
                cost, est = self.worst_case(queue[i])
                if reserved + cost > left:
                    self.next_cost = cost
                    break
                window.append(queue[i])
                reserved_for[id(queue[i])] = (cost, est)
                reserved += cost
                i += 1
            if not window:
                self.not_issued = queue[i:]
                log.warning("budget: stopping with %d calls not issued (%s spent of %s; the next call could "
                            "cost up to %s)", len(self.not_issued), usd(self.spent), usd(self.budget),
                            usd(self.next_cost))
                return
            self.inner.generate(window, counted, progress)
            # Calls the backend never answered (interrupted) release nothing: their cost is unknown.
            for req in window:
                if id(req) in reserved_for:
                    self.spent += reserved_for.pop(id(req))[0]

    def summary(self, field_name: str) -> dict[str, Any]:
        return {"field": field_name, "budget_usd": self.budget, "spent_usd": round(self.spent, 6),
                "spent_this_run_usd": round(self.spent - self.spent_before, 6), "calls_issued": self.issued,
                "calls_not_issued": len(self.not_issued), "stopped": self.stopped,
                "next_call_max_usd": None if self.next_cost is None else round(self.next_cost, 6)}

    def message(self, stage: str, field_name: str, kept: str) -> str:
        return (
            f"{field_name}: {stage} stopped before a call could take its spending past the budget: "
            f"{self.issued} calls made this run, {len(self.not_issued)} not issued; spent {usd(self.spent)} of "
            f"{usd(self.budget)} in total ({usd(self.spent - self.spent_before)} this run), "
            f"{usd(max(0.0, self.budget - self.spent))} left, and the next call could cost up to "
            f"{usd(self.next_cost)}. {kept}; raise {field_name} and run `qrdistill {stage}` again to continue "
            f"(stored calls are not paid again)"
        )


def budget_gate(backend: Any, budget: float, prices: dict[str, Any], store_path: Path, kind: str,
                backend_config: Any, budget_field: str, model_field: str) -> BudgetGate:
    """A gate for `backend` with what the store's calls of `kind` have already spent."""
    price = require_price(prices, backend.model, budget_field, model_field)
    spent, unpriced = stored_spend(store_path, kind, prices)
    for model, n in unpriced.items():
        log.warning("%s: %d stored %s calls of model %r have no price in `prices`, or no usage reported by the "
                    "server and no budget charge stored, and are not counted against the budget", budget_field, n,
                    kind, model)
    counter = token_counter(backend_config, model_field.rsplit(".", 1)[0])
    probe = int(getattr(backend_config, "max_concurrency", None) or getattr(backend_config, "batch_size", 8))
    return BudgetGate(backend, budget, spent, price, counter, probe=probe)


# ---------------------------------------------------------------- actual cost, for the report


def cost_rows(calls: Sequence[dict[str, Any]], groups: dict[str, tuple[str, str]],
              prices: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Stored usage per stage x task x style x model: calls, tokens and (when priced) USD.

    `groups` maps a request key to its (task, style), in pool order; a call whose key it lacks (a path no
    longer in the pool) counts under task and style "?", last.
    """
    acc: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for c in calls:
        task, style = groups.get(c["key"], ("?", "?"))
        k = (STAGE_OF_KIND.get(c["kind"], c["kind"]), task, style, c["model"])
        row = acc.setdefault(k, {"stage": k[0], "task": task, "style": style, "model": c["model"], "calls": 0,
                                 "errors": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0,
                                 "unmetered": 0, "cost_usd": None})
        row["calls"] += 1
        row["errors"] += c["status"] != "ok"
        row["unmetered"] += bool(c.get("unmetered"))
        for n in ("prompt_tokens", "cached_tokens", "completion_tokens"):
            row[n] += c[n]
        price = price_of(prices, c["model"])
        if price is not None:
            # A call without reported usage costs what the budget charged it (as in stored_spend), else unknown.
            spent = (c["charged_usd"] if c.get("unmetered") else
                     call_cost(price, c["prompt_tokens"], c["completion_tokens"], c["cached_tokens"]))
            row["cost_usd"] = (row["cost_usd"] or 0.0) + spent
    # Stages in pipeline order, then tasks and styles in the order the pool lists them (the config's).
    stage_rank = {s: i for i, s in enumerate(STAGE_OF_KIND.values())}
    group_rank: dict[tuple[str, str], int] = {}
    for g in groups.values():
        group_rank.setdefault(g, len(group_rank))
    return sorted(acc.values(), key=lambda r: (stage_rank.get(r["stage"], len(stage_rank)),
                                              group_rank.get((r["task"], r["style"]), len(group_rank)), r["model"]))


__all__ = [
    "BudgetExhausted", "BudgetGate", "PlannedCall", "TokenCounter", "budget_gate", "call_cost", "cost_rows",
    "estimate", "format_estimate", "key_backend", "no_price", "price_of", "require_price", "stored_calls",
    "stored_ok_usage", "stored_spend", "token_counter", "usd",
]
