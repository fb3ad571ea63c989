"""The end-of-training note on ACM (Eq. 9): at chance (ln K) or below, in words."""

import math

from llamafactory_attok.training_notes import acm_chance_note


def _history(values):
    return [{"loss": 1.0, "loss_acm": v} for v in values] + [{"train_runtime": 1.0}]


def test_acm_at_ln_k_is_called_chance_and_the_falling_total_explained():
    note = acm_chance_note(_history([0.70, 0.69, 0.693, 0.694]), 2)
    assert note.startswith("AttTok: loss_acm ended at 0.694 (mean of the last 1 logged step(s)), chance is ln K = ")
    assert f"ln 2 = {math.log(2):.3f}: ACM stayed at chance" in note and "λ decaying to 0" in note


def test_acm_below_ln_k_is_said_to_have_aligned():
    note = acm_chance_note(_history([1.6, 1.2, 0.8, 0.4, 0.3, 0.2, 0.21, 0.19]), 5)
    assert "ended at 0.200 (mean of the last 2 logged step(s)), below chance ln K = ln 5 = 1.609 (12% of it)" in note


def test_no_acm_logged_gives_no_note_and_one_book_says_why():
    assert acm_chance_note([{"loss": 1.0}], 3) is None
    assert "K = 1 attribute book ACM has no negatives" in acm_chance_note(_history([0.0]), 1)


def test_curves_keep_one_point_per_step_after_a_resume():
    """LF appends to trainer_log.jsonl: a run killed after step 4 and resumed from checkpoint-2 logs steps 3 and 4
    again; the curves (report, LlamaBoard panel) keep the later entry of each step, in step order."""
    from llamafactory_attok.trainer_log import latest_per_step

    log = [{"current_steps": s, "loss_ntp": float(s)} for s in (1, 2, 3, 4)] + \
          [{"current_steps": s, "loss_ntp": 10.0 + s} for s in (3, 4, 5, 6)] + [{"current_steps": 6}]
    assert latest_per_step(log, "loss_ntp") == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0), (6, 16.0)]
