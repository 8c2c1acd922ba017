"""Every command's inputs, fuzzed (tests/fuzz_cases.py): each case ends in exit status 2, at most a few ``error:``
lines, no traceback, and leaves the run directory and the cache as they were.

The CI slice is the first ``QTUNE_FUZZ_CASES`` cases of seed 0 (default 48, eight of each kind); a longer run
is ``QTUNE_FUZZ_CASES=600 pytest tests/test_fuzz_inputs.py`` or ``scripts/fuzz_inputs.py --cases 600`` (a tally).
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz_cases import Workspace, generate, run_case

CASES = int(os.environ.get("QTUNE_FUZZ_CASES", "48"))
SEED = int(os.environ.get("QTUNE_FUZZ_SEED", "0"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("fuzz"), tiny_llama_dir)


@pytest.mark.parametrize("index", range(CASES))
def test_bad_input_ends_in_one_clear_line(workspace, tmp_path, index):
    case = generate(SEED, index, workspace, tmp_path / "case")
    outcome = run_case(case, tmp_path / "case", workspace)
    assert not outcome.problems, (f"case {index} of seed {SEED} ({case.kind}: {case.label}): {'; '.join(outcome.problems)}\n"
                                  f"qtune {' '.join(case.argv)}\n{outcome.err[-3000:]}")
