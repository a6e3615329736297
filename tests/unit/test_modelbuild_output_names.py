"""``fogline models import --output-names``: how given names for a torch source's outputs are checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fogline.modelbuild import output_names
from fogline.modelbuild.import_errors import ImportRefused

pytestmark = pytest.mark.unit

SOURCE = Path("two_heads.pt2")


def test_default_names_follow_the_output_count() -> None:
    assert output_names.resolve(1, None, ["x"], SOURCE) == ["output"]
    assert output_names.resolve(3, None, ["x"], SOURCE) == ["output_0", "output_1", "output_2"]


def test_given_names_are_parsed_and_kept_in_order() -> None:
    given = output_names.parse(" logits, embedding ")
    assert given == ("logits", "embedding")
    assert output_names.resolve(2, given, ["x"], SOURCE) == ["logits", "embedding"]


@pytest.mark.parametrize(("text", "message"), [
    ("logits", "returns 2 outputs from forward(), 1 name given"),
    ("a,b,c", "returns 2 outputs from forward(), 3 names given"),
    ("logits,logits", "'logits' is given twice"),
    ("logits,x", "'x' is an input of the model"),
    ("logits,labels", "'labels' is reserved by the import"),
    ("logits,", "'' is not a valid tensor name"),
    ("logits,my scores", "'my scores' is not a valid tensor name"),
])
def test_bad_names_are_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ImportRefused, match=re.escape(message)) as caught:
        output_names.resolve(2, output_names.parse(text), ["x"], SOURCE)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"--output-names {text}: ")


def test_an_onnx_source_names_its_own_outputs() -> None:
    output_names.refuse_for_onnx(None, Path("m.onnx"))
    with pytest.raises(ImportRefused, match="is an ONNX file, whose graph already names its outputs"):
        output_names.refuse_for_onnx(("a", "b"), Path("m.onnx"))
