"""HuJSON: comments and trailing commas, with positions kept for error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshscale.errors import PolicyError
from meshscale.plugins.policy import hujson


def test_comments_and_trailing_commas() -> None:
    text = """// leading comment
    {
      "a": [1, 2, ],  /* block
      comment */
      "b": {"c": "x",},
    }"""
    assert hujson.loads(text) == {"a": [1, 2], "b": {"c": "x"}}


def test_comment_markers_inside_strings_are_kept() -> None:
    text = '{"url": "https://example.com//x", "glob": "/* not a comment */", "q": "a\\"//b",}'
    assert hujson.loads(text) == {
        "url": "https://example.com//x",
        "glob": "/* not a comment */",
        "q": 'a"//b',
    }


def test_standardize_keeps_line_structure() -> None:
    text = '{\n  // one\n  "a": 1, /* two\n three */\n}\n'
    out = hujson.standardize(text)
    assert len(out) == len(text)
    assert out.count("\n") == text.count("\n")
    assert json.loads(out) == {"a": 1}


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(PolicyError) as err:
        hujson.loads('{\n  "a": 1\n  "b": 2\n}')
    assert err.value.location.startswith("line 3")


def test_unterminated_block_comment() -> None:
    with pytest.raises(PolicyError) as err:
        hujson.loads('{\n"a": 1 /* never closed\n}')
    assert err.value.location == "line 2"


CORPUS = Path("/work/shared/conformance/policy")


@pytest.mark.skipif(not CORPUS.exists(), reason="conformance corpus not present")
def test_corpus_originals_parse_to_the_captured_policy() -> None:
    # Each case keeps the original HuJSON file; its "policy" must equal the captured JSON.
    for path in sorted(CORPUS.glob("*/*.json"))[::7]:
        case = json.loads(path.read_text())
        assert hujson.loads(case["policy_text"])["policy"] == case["policy"], path.name
