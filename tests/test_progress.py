"""Plain progress lines where tqdm is not installed (a bare GPU node)."""

from __future__ import annotations

import io

from mmdistill.progress import PlainProgress


def test_iterating_reports_the_last_item_and_yields_everything():
    out = io.StringIO()
    items = list(PlainProgress(range(5), total=5, desc="epoch 1/3", file=out, mininterval=3600))
    assert items == [0, 1, 2, 3, 4]
    assert out.getvalue().startswith("epoch 1/3: 5/5 (")  # only the last step: the interval is long
    assert out.getvalue().count("\n") == 1


def test_counting_bytes_with_update_as_a_context_manager():
    out = io.StringIO()
    with PlainProgress(total=300, initial=100, unit="B", desc="file.pkl", file=out, mininterval=0) as bar:
        bar.update(100)
        bar.update(100)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("file.pkl: 200/300 B") and lines[-1].startswith("file.pkl: 300/300 B")


def test_disabled_prints_nothing():
    out = io.StringIO()
    with PlainProgress(total=2, file=out, disable=True, mininterval=0) as bar:
        bar.update(2)
    assert list(PlainProgress([1, 2], total=2, file=out, disable=True)) == [1, 2]
    assert out.getvalue() == ""
