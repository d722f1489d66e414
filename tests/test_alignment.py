"""Span alignment between students whose tokenizers cut the same text differently."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrdistill.train.alignment import align_students, common_spans, span_pool_matrix, trim_offsets
from qrdistill.train.students import StudentOutput
from tests.tiny_models import make_tiny_students


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    paths = make_tiny_students(tmp_path_factory.mktemp("tiny"))
    return [AutoTokenizer.from_pretrained(p) for p in paths]


def trimmed(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return trim_offsets(text, enc["offset_mapping"])


def independent_cuts(offsets):
    """Brute force: token edges that no token strictly contains."""
    toks = [(s, e) for s, e in offsets if e > s]
    edges = {p for t in toks for p in t}
    return {p for p in edges if not any(s < p < e for s, e in toks)}


def check_spans(text, per_student):
    spans = common_spans(per_student)
    # Sorted, disjoint, non-empty.
    for (_s0, e0), (s1, _e1) in zip(spans, spans[1:], strict=False):
        assert e0 <= s1
    assert all(e > s for s, e in spans)
    common = set.intersection(*(independent_cuts(o) for o in per_student))
    for s, e in spans:
        # Finest: no common cut strictly inside a span; and both ends are common cuts.
        assert not any(s < p < e for p in common)
        assert s in common and e in common
    nonspace = {i for i, ch in enumerate(text) if not ch.isspace()}
    for offsets in per_student:
        pool = span_pool_matrix(offsets, spans)
        assert pool.shape == (len(spans), len(offsets))
        torch.testing.assert_close(pool.sum(dim=1), torch.ones(len(spans)))
        for n, (s, e) in enumerate(spans):
            members = [offsets[t] for t in pool[n].nonzero().flatten().tolist()]
            assert members, "every span holds a token of every student"
            # The pooled tokens cover exactly the span's characters, no more, no less.
            assert min(a for a, _ in members) == s and max(b for _, b in members) == e
            covered = {i for a, b in members for i in range(a, b)} & nonspace
            assert covered == {i for i in range(s, e)} & nonspace
        # A token is pooled into at most one span.
        assert bool((pool > 0).sum(dim=0).le(1).all())
    return spans


def test_trim_offsets_strips_whitespace_and_empties_space_tokens():
    text = "a  bc\n d"
    assert trim_offsets(text, [(0, 1), (1, 5), (5, 7), (7, 8)]) == [(0, 1), (3, 5), (7, 7), (7, 8)]


def test_leading_space_conventions_agree_after_trimming():
    text = "ab cd"
    gpt2_style = trim_offsets(text, [(0, 2), (2, 5)])  # "ab", "Ġcd" with the space in the offsets
    sp_style = trim_offsets(text, [(0, 2), (2, 3), (3, 5)])  # "ab", "▁", "cd"
    wordpiece = [(0, 2), (3, 5)]  # spaces dropped entirely
    assert common_spans([gpt2_style, sp_style, wordpiece]) == [(0, 2), (3, 5)]
    # Untrimmed, a space attached to the next word ("a", "Ġb") and one attached to the previous
    # word ("a ", "b") would leave only the text's ends as common boundaries.
    assert common_spans([[(0, 1), (1, 3)], [(0, 2), (2, 3)]]) == [(0, 3)]
    assert common_spans([trim_offsets("a b", [(0, 1), (1, 3)]), trim_offsets("a b", [(0, 2), (2, 3)])]) == [
        (0, 1),
        (2, 3),
    ]


def test_common_spans_merges_until_boundaries_agree():
    # "12345": one student reads "12","345", the other "1","23","45" -> common cuts 0 and 5 only.
    assert common_spans([[(0, 2), (2, 5)], [(0, 1), (1, 3), (3, 5)]]) == [(0, 5)]
    # Same tokenization -> one span per token.
    assert common_spans([[(0, 1), (1, 3)], [(0, 1), (1, 3)]]) == [(0, 1), (1, 3)]


def test_overlapping_and_duplicate_offsets_are_not_split():
    # Byte-level BPE gives every byte-token of "é" the character's offsets (2, 3).
    a = [(0, 2), (2, 3), (2, 3), (3, 4)]
    b = [(0, 1), (1, 3), (3, 4)]
    spans = common_spans([a, b])
    assert spans == [(0, 3), (3, 4)]
    pool = span_pool_matrix(a, spans)
    assert pool[0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    # Overlapping tokens (0,3),(2,4): no cut at 2 or 3.
    assert common_spans([[(0, 3), (2, 4)], [(0, 2), (2, 4)]]) == [(0, 4)]


def test_truncated_student_limits_the_spans():
    full = [(0, 2), (3, 5), (6, 8)]
    truncated = [(0, 2), (3, 5)]
    assert common_spans([full, truncated]) == [(0, 2), (3, 5)]


def test_span_pool_matrix_rejects_foreign_spans():
    with pytest.raises(ValueError, match="common_spans"):
        span_pool_matrix([(0, 2)], [(0, 2), (3, 5)])


def test_real_tokenizers_cover_the_same_characters(tokenizers):
    text = (
        "One week from 03/15/2021 is 03/22/2021.  So   the answer...\n\n"
        "The answer is (B) 03/22/2021. Café naïve 😀 x=12+30; y:=42!"
    )
    per_student = [trimmed(t, text) for t in tokenizers]
    assert per_student[0] != per_student[1], "the two tiny tokenizers must cut differently"
    spans = check_spans(text, per_student)
    # The digit-splitting unigram and the digit-merging BPE agree on whole numbers, not on digits.
    assert (text.index("2021"), text.index("2021") + 4) in spans or any(
        s <= text.index("2021") and text.index("2021") + 4 <= e for s, e in spans
    )
    assert len(spans) > 10


PIECES = list("abcXYZ0123456789 .,;:!?()/+-=\n\t'\"") + ["  ", "   ", "the ", "2021", "é", "ß", "日本", "😀", "Ω"]
TEXT = st.lists(
    st.one_of(st.sampled_from(PIECES), st.characters(exclude_categories=("Cs",))), max_size=40
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_property_spans_are_common_and_exact(tokenizers, text):
    per_student = [trimmed(t, text) for t in tokenizers]
    check_spans(text, per_student)


@settings(max_examples=100, deadline=None)
@given(
    cuts=st.lists(st.sets(st.integers(1, 29), max_size=12), min_size=2, max_size=3),
)
def test_property_synthetic_segmentations(cuts):
    text = "x" * 30
    per_student = []
    for c in cuts:
        bounds = [0, *sorted(c), 30]
        per_student.append(list(zip(bounds[:-1], bounds[1:], strict=False)))
    spans = check_spans(text, per_student)
    common = set.intersection(*({0, 30} | c for c in cuts))
    assert [s for s, _ in spans] + [30] == sorted(common)


def test_align_students_pools_the_same_characters(tmp_path):
    from qrdistill.train.students import load_students

    paths = make_tiny_students(tmp_path)
    students = load_students([{"name": "llama", "model": paths[0]}, {"name": "gpt2", "model": paths[1]}])
    prompts = ["Question: when?\nAnswer: Let's think step by step.\n", "Q: sum?\n"]
    responses = ["Today is 03/15/2021, so  next week is 03/22/2021. The answer is (B).", "12 + 30 = 42 😀"]
    width = max(len(r) for r in responses)
    batches = [s.encode(prompts, responses, max_length=128) for s in students]
    outputs = []
    for batch in batches:
        # Each token's "hidden state" marks the characters it covers, so a pooled vector's
        # support is exactly the characters that span pooled.
        bsz, seq_len = batch.input_ids.shape
        hidden = torch.zeros(bsz, seq_len, width, requires_grad=False)
        for i in range(bsz):
            positions = batch.response_mask[i].nonzero().flatten().tolist()
            for pos, (s, e) in zip(positions, batch.response_offsets[i], strict=True):
                hidden[i, pos, s:e] = 1.0
        outputs.append(StudentOutput(token_nll=torch.zeros(bsz, seq_len), hidden=hidden.requires_grad_(),
                                     response_mask=batch.response_mask))
    pooled, mask = align_students(outputs, batches)
    assert [p.shape[-1] for p in pooled] == [width, width]
    assert pooled[0].shape[:2] == mask.shape == pooled[1].shape[:2]
    for i, response in enumerate(responses):
        spans = common_spans([b.response_offsets[i] for b in batches])
        assert int(mask[i].sum()) == len(spans) > 3
        for n, (s, e) in enumerate(spans):
            supports = []
            for p in pooled:
                chars = {c for c in p[i, n].nonzero().flatten().tolist() if not response[c].isspace()}
                supports.append(chars)
            assert supports[0] == supports[1] == {c for c in range(s, e) if not response[c].isspace()}
        assert bool((pooled[0][i, len(spans):] == 0).all())
    (pooled[0].sum() + pooled[1].sum()).backward()
    assert outputs[0].hidden.grad is not None and outputs[1].hidden.grad.abs().sum() > 0
