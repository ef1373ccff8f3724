"""The policy conformance corpus: every captured case through ``compile_topology``.

One test per case. A case listed in ``data/xfail.json`` is marked xfail (strict) with the
reason written there, so the pass count stays honest; nothing is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance import corpus

FILES = corpus.case_files()
XFAIL = corpus.known_failures()


def _param(path: Path) -> object:
    case_id = path.stem
    marks = []
    if case_id in XFAIL:
        marks.append(pytest.mark.xfail(reason=XFAIL[case_id], strict=True))
    return pytest.param(path, id=f"{path.parent.name}/{case_id}", marks=marks)


def test_corpus_is_present() -> None:
    assert len(FILES) == 655, f"expected the 655-case corpus at {corpus.CORPUS}"


def test_xfail_list_names_real_cases() -> None:
    ids = {p.stem for p in FILES}
    assert set(XFAIL) <= ids


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_case(path: Path) -> None:
    case = corpus.load(path)
    problem = corpus.run_case(case)
    if problem is not None:
        pytest.fail(f"{case['id']} ({case['description']}):\n{problem}", pytrace=False)
