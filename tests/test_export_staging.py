"""What a killed export leaves behind is restored or removed by the next export to the same place."""

from __future__ import annotations

import json

import pytest

from qrdistill.errors import QRDistillError
from qrdistill.export import staged_dir
from qrdistill.export.gguf import _manifest, _publish, check_dest


def _tree(path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_previous_export_moved_aside_by_a_killed_export_comes_back(tmp_path):
    dest = tmp_path / "export"
    # The state a kill leaves between the two renames: the previous export moved aside, `dest` gone,
    # and the new folder (complete or not) still under its temporary name.
    (tmp_path / ".export.tmp-aaaa.old").mkdir()
    (tmp_path / ".export.tmp-aaaa.old" / "data.jsonl").write_text("previous\n")
    (tmp_path / ".export.tmp-aaaa").mkdir()
    (tmp_path / ".export.tmp-aaaa" / "data.jsonl").write_text("half")
    with pytest.raises(RuntimeError), staged_dir(dest, "--out export", "the dataset") as tmp:
        (tmp / "data.jsonl").write_text("new, but the export fails\n")
        raise RuntimeError("export failed")
    assert _tree(dest) == {"data.jsonl": "previous\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]


def test_leftovers_beside_a_whole_export_are_removed_on_the_next_export(tmp_path):
    dest = tmp_path / "export"
    dest.mkdir()
    (dest / "data.jsonl").write_text("previous\n")
    for stale in (".export.tmp-bbbb.old", ".export.tmp-cccc", ".other.tmp-dddd"):
        (tmp_path / stale).mkdir()
    with staged_dir(dest, "--out export", "the dataset") as tmp:
        (tmp / "data.jsonl").write_text("new\n")
    assert _tree(dest) == {"data.jsonl": "new\n"}
    # Another destination's staging folder is not this export's to remove.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", ".other.tmp-dddd", "export"]


def test_a_second_export_to_the_same_place_is_refused_while_one_runs(tmp_path):
    """The next export clears a killed one's leftovers, so it must not start beside a running one."""
    dest = tmp_path / "export[1]"  # glob characters in the name match nothing else
    (tmp_path / ".export1.tmp-eeee").mkdir()
    with staged_dir(dest, "--out export[1]", "the dataset") as tmp:
        (tmp / "data.jsonl").write_text("first\n")
        with pytest.raises(QRDistillError, match=r"another export of the dataset there is running"), \
                staged_dir(dest, "--out export[1]", "the dataset"):
            pass
        assert tmp.is_dir()  # the running export's folder is untouched
    assert _tree(dest) == {"data.jsonl": "first\n"}
    assert (tmp_path / ".export1.tmp-eeee").is_dir()


def test_a_gguf_killed_while_publishing_is_still_replaceable(tmp_path, monkeypatch):
    dest = tmp_path / "student-f16.gguf"
    tmp = tmp_path / "work.gguf"
    tmp.write_bytes(b"first")
    _publish(tmp, dest, {"what": "gguf", "file": dest.name, "n": 1})
    assert json.loads(_manifest(dest).read_text())["n"] == 1
    check_dest(dest)

    # A kill after the old manifest is removed and before the new file is in place.
    import qrdistill.export.gguf as gguf

    def killed(src, dst):
        raise KeyboardInterrupt

    tmp.write_bytes(b"second")
    monkeypatch.setattr(gguf.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _publish(tmp, dest, {"what": "gguf", "file": dest.name, "n": 2})
    monkeypatch.undo()
    assert dest.read_bytes() == b"first" and not _manifest(dest).exists()
    check_dest(dest)  # its staged manifest says an export wrote it: the next export may replace it

    _publish(tmp, dest, {"what": "gguf", "file": dest.name, "n": 3})
    assert dest.read_bytes() == b"second" and json.loads(_manifest(dest).read_text())["n"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student-f16.gguf", "student-f16.json"]

    foreign = tmp_path / "mine.gguf"
    foreign.write_bytes(b"not an export")
    with pytest.raises(QRDistillError, match="is not a previous GGUF export"):
        check_dest(foreign)
