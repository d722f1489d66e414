"""Align hidden states of students whose tokenizers cut the same text differently.

Mutual distillation (eqs. 5-8) compares the students' last hidden states. Two
tokenizers rarely agree on token boundaries ("2021" may be one token for one
student and four for another), so token position i of one student says nothing
about position i of another. We compare them on *common character spans*
instead: the finest segmentation of the response text whose every boundary is
a token boundary for every student. Each student's states are mean-pooled over
the tokens inside a span, giving one vector per span per student, and spans are
the same characters for everyone.

Offsets here are always *trimmed*: character offsets relative to the response
text with leading and trailing whitespace removed (see `trim_offsets`).
Tokenizers disagree on where a space belongs -- GPT-2's byte-level BPE may put
it at the start of "Ġword" or leave it out of the offsets, SentencePiece
attaches "▁" to the following word, WordPiece drops it -- so untrimmed offsets
would make "a b" look like (0,1)(1,3) to one student and (0,2)(2,3) to another
and the only common boundary would be the ends. After trimming both read
(0,1)(2,3). A token that is only whitespace (or a special token such as EOS)
has an empty offset (s, s), belongs to no span and is never pooled: it carries
no characters to compare.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from qrdistill.train.students import StudentBatch, StudentOutput

Span = tuple[int, int]


def trim_offsets(text: str, offsets: Sequence[Span]) -> list[Span]:
    """Shrink each (start, end) to exclude surrounding whitespace; whitespace-only -> (start, start)."""
    out = []
    for start, end in offsets:
        s, e = int(start), int(end)
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        out.append((s, s) if s >= e else (s, e))
    return out


def _cut_points(offsets: Sequence[Span]) -> set[int]:
    """Token boundaries of one tokenization that no token of it straddles."""
    tokens = sorted((s, e) for s, e in offsets if e > s)
    if not tokens:
        return set()
    points = {p for tok in tokens for p in tok}
    # A point strictly inside any token cannot delimit a span: pooling would split that token.
    # Merge overlapping token intervals and drop points falling strictly inside the merged ones.
    merged: list[list[int]] = []
    for s, e in tokens:
        if merged and s < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    starts = [m[0] for m in merged]
    cut = set()
    for p in points:
        i = bisect.bisect_right(starts, p) - 1
        if i >= 0 and merged[i][0] < p < merged[i][1]:
            continue
        cut.add(p)
    return cut


def common_spans(offsets_per_student: list[list[Span]]) -> list[Span]:
    """The finest segmentation of one response that every student's tokens respect.

    `offsets_per_student[s]` are student s's trimmed token offsets on the same
    response text. A span runs between consecutive boundaries that are token
    boundaries for every student and not inside any token of any student; a
    span is kept only if every student has at least one (non-empty) token
    inside it, so whitespace gaps between words and text that one student lost
    to truncation produce no span.
    """
    if not offsets_per_student:
        return []
    cuts = None
    for offsets in offsets_per_student:
        c = _cut_points(offsets)
        cuts = c if cuts is None else cuts & c
    bounds = sorted(cuts)
    candidates = list(zip(bounds[:-1], bounds[1:], strict=False))
    if not candidates:
        return []
    covered = [False] * len(candidates)
    first = True
    for offsets in offsets_per_student:
        has = [False] * len(candidates)
        for s, e in offsets:
            if e > s:
                i = bisect.bisect_right(bounds, s) - 1
                if 0 <= i < len(candidates):
                    has[i] = True
        covered = has if first else [a and b for a, b in zip(covered, has, strict=False)]
        first = False
    return [span for span, ok in zip(candidates, covered, strict=False) if ok]


def span_pool_matrix(offsets: list[Span], spans: list[Span]) -> Tensor:
    """[N, T_resp] averaging matrix: row n is uniform over the tokens lying inside span n.

    `offsets` are one student's trimmed response-token offsets (T_resp of
    them, EOS included with an empty offset); `spans` come from
    `common_spans`, so every token is inside at most one span and every span
    contains at least one token of this student (rows sum to 1).
    """
    import torch

    mat = torch.zeros(len(spans), len(offsets), dtype=torch.float32)
    starts = [s for s, _ in spans]
    for t, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        n = bisect.bisect_right(starts, s) - 1
        if n >= 0 and e <= spans[n][1]:
            mat[n, t] = 1.0
    counts = mat.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError("a span contains no token of this student: spans must come from common_spans")
    return mat / counts


def align_students(
    outputs: list[StudentOutput], batches: list[StudentBatch]
) -> tuple[list[Tensor], Tensor]:
    """Pool every student's last hidden states onto the common character spans of each path.

    outputs[s].hidden: [B, T_s, H_s]; batches[s] describe the same B paths in
    student s's tokens. Returns (pooled, mask): pooled[s] is [B, N, H_s] (the
    span-level z_s of eq. 5), mask [B, N] bool marks real spans, N = the most
    spans of any path in the batch. Differentiable w.r.t. the hidden states.
    """
    import torch

    if len(outputs) != len(batches) or not outputs:
        raise ValueError("align_students needs one output per batch, for at least one student")
    num_paths = {len(b.response_offsets) for b in batches}
    if len(num_paths) != 1:
        raise ValueError(f"students see different numbers of paths: {sorted(num_paths)}")
    bsz = num_paths.pop()

    per_path_spans = [
        common_spans([b.response_offsets[i] for b in batches]) for i in range(bsz)
    ]
    n_max = max((len(s) for s in per_path_spans), default=0)
    mask = torch.zeros(bsz, n_max, dtype=torch.bool)
    for i, spans in enumerate(per_path_spans):
        mask[i, : len(spans)] = True

    pooled = []
    for out, batch in zip(outputs, batches, strict=True):
        hidden = out.hidden
        seq_len = hidden.shape[1]
        pool = torch.zeros(bsz, n_max, seq_len, dtype=hidden.dtype, device=hidden.device)
        for i, spans in enumerate(per_path_spans):
            if not spans:
                continue
            positions = batch.response_mask[i].nonzero(as_tuple=True)[0].to(hidden.device)
            offsets = batch.response_offsets[i]
            if len(offsets) != positions.numel():
                raise ValueError(
                    f"path {i}: {len(offsets)} response offsets but {positions.numel()} response tokens"
                )
            mat = span_pool_matrix(offsets, spans).to(device=hidden.device, dtype=hidden.dtype)
            pool[i, : len(spans)].index_copy_(1, positions, mat)
        pooled.append(torch.bmm(pool, hidden))
    return pooled, mask
