"""The bf16 token check of the GPU tests (`greedy_differences_off_ties`) passes exact ties and nothing else."""
from __future__ import annotations

import torch

from tests.helpers import greedy_differences_off_ties


def _run(step_logits: list[list[float]], ref_new: list[int], new: list[int]):
    prompt = [5, 6]
    ref = torch.tensor([prompt + ref_new])
    ours = torch.tensor([prompt + new])
    logits = tuple(torch.tensor([row], dtype=torch.bfloat16) for row in step_logits)
    return greedy_differences_off_ties(logits, len(prompt), ours, ref)


def test_identical_tokens_pass():
    assert _run([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]], [1, 0], [1, 0]) == []


def test_a_difference_at_an_exact_tie_passes_and_later_steps_are_not_compared():
    # step 0: the reference picked 1, ours 2; both hold the top value (a tie); step 1 then differs freely
    assert _run([[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]], [1, 0], [2, 1]) == []


def test_a_near_tie_fails():
    # one bf16 ulp apart at 1.0 is still a margin: not a tie
    problems = _run([[0.0, 1.0, 0.9921875]], [1], [2])
    assert len(problems) == 1 and "row 0, new token 0: 2 instead of 1" in problems[0] and "0.0078125" in problems[0]


def test_a_tie_between_two_tokens_does_not_excuse_a_third():
    problems = _run([[1.0, 1.0, 0.0]], [0], [2])
    assert len(problems) == 1 and "margin 0" in problems[0]


def test_a_late_difference_fails():
    problems = _run([[0.0, 3.0], [0.0, 3.0], [0.0, 5.0]], [1, 1, 1], [1, 1, 0])
    assert len(problems) == 1 and "new token 2" in problems[0]
