"""Reading inputs and splitting texts into segments."""

import pytest

from gradmem_cli.memory.documents import read_inputs, split_segments
from gradmem_cli.errors import GradmemError


def test_split_segments_balanced_and_lossless():
    ids = list(range(130))
    segs = split_segments(ids, 64)
    assert [len(s) for s in segs] == [44, 43, 43]
    assert [t for s in segs for t in s] == ids
    assert split_segments(list(range(64)), 64) == [list(range(64))]
    assert [len(s) for s in split_segments(list(range(5)), 2)] == [2, 2, 1]


def test_read_inputs_files_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("not text input")
    docs = read_inputs([str(tmp_path)])
    assert [d.text for d in docs] == ["first", "second"]
    assert docs[0].nbytes == 5 and len(docs[0].sha256) == 64


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"  \n\t", "is empty"), (b"abc\x00def", "binary"), (b"caf\xe9", "not UTF-8")],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(GradmemError, match=message):
        read_inputs([str(path)])


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(GradmemError, match="no such file"):
        read_inputs([str(tmp_path / "nope.txt")])
    with pytest.raises(GradmemError, match="no .txt files"):
        read_inputs([str(tmp_path)])


def test_duplicate_output_names(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "doc.txt").write_text("one")
    (tmp_path / "doc.txt").write_text("two")
    with pytest.raises(GradmemError, match="same output name"):
        read_inputs([str(tmp_path / "doc.txt"), str(tmp_path / "x")])
