"""The reliability figures the README and docs/RELIABILITY.md quote stay true: the number of refused bad-input
cases is the size of the four corpora, and the fault campaign result they name exists and says what they say."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else None]


def test_the_refused_case_count_quoted_is_the_corpus_size():
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import test_bad_inputs
    import test_bad_inputs_data
    import test_bad_inputs_deploy
    import test_bad_inputs_train

    sizes = [len(test_bad_inputs.CORPUS), len(test_bad_inputs_data.DATA_CASES), len(test_bad_inputs_train.CASES),
             len(test_bad_inputs_deploy.CORPUS)]
    readme = _section((REPO / "README.md").read_text(), "Reliability")
    doc = (REPO / "docs" / "RELIABILITY.md").read_text()
    fix = (f"the corpus now holds {sum(sizes)} refused cases {sizes}: update README 'Reliability' and the table "
           "of docs/RELIABILITY.md")
    assert f"{sum(sizes)} crafted bad inputs" in readme, fix
    assert f"| **total** | **{sum(sizes)}** |" in doc and f"# {sum(sizes)}" in doc, fix
    rows = re.findall(r"^\| `tests/(test_bad_inputs\w*)\.py` \| (\d+) \|", doc, re.M)
    assert [int(n) for _, n in rows] == sizes, fix


def test_the_campaign_result_quoted_is_the_curated_file():
    readme = _section((REPO / "README.md").read_text(), "Reliability")
    named = re.findall(r"benchmarks/results/(fault_campaign_[\d-]+)\.md", readme)
    assert named, "README 'Reliability' names no fault campaign result"
    res = json.loads((REPO / "benchmarks" / "results" / f"{named[0]}.json").read_text())
    t = res["totals"]
    claim = f"survived {t['survived']}/{t['kills']}, lost {t['lost']}"
    assert claim in readme and claim in (REPO / "benchmarks" / "results" / f"{named[0]}.md").read_text()
    assert t["kills"] == res["campaign"]["n"] and set(res["per_command"]) == {"convert", "train", "export", "infer"}
    assert all(p["kills"] > 0 for p in res["per_command"].values())
    assert named[0] in (REPO / "docs" / "RELIABILITY.md").read_text()
