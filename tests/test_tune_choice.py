"""Which trial `focusml tune` reports and registers: never one whose run warns (chance accuracy, an
all-zero CAM) while a trial without a warning completed, and never one that warns without saying so."""

from __future__ import annotations

import optuna

from focusml.tune import choose_trial
from focusml.tune.results import WARNING_ATTR, StudyResult, TrialRecord

DIST = {"lam": optuna.distributions.FloatDistribution(0.001, 10.0, log=True)}
CHANCE = "the model ends at chance accuracy (acc/val 0.102, majority class 0.110): it learned nothing"


def trial(number: int, values: list[float] | None, warning: str | None = None,
          state=optuna.trial.TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(params={"lam": 0.1 * (number + 1)}, distributions=DIST, state=state,
                                  values=values, user_attrs={WARNING_ATTR: warning} if warning else {})
    t.number = number
    return t


def test_a_trial_that_warns_is_passed_over_for_the_best_healthy_one_and_named():
    # minimising evidence in the mask: a collapsed model (all-zero CAM) has none, so it scores best
    trials = [trial(0, [0.20]), trial(1, [0.0], "the CAM is zero everywhere"), trial(2, [0.05]),
              trial(3, [0.01], CHANCE), trial(4, None, state=optuna.trial.TrialState.PRUNED)]
    chosen, notes = choose_trial(trials, ["minimize"])
    assert chosen.number == 2
    assert len(notes) == 2 and notes[0].startswith("trial #1 scored better (0)") and "CAM is zero" in notes[0]
    assert "trial #3" in notes[1] and "chance accuracy" in notes[1] and "passed over for trial #2 (0.05)" in notes[1]


def test_a_healthy_best_needs_no_note_and_ties_keep_the_earliest():
    chosen, notes = choose_trial([trial(0, [0.5]), trial(1, [0.9]), trial(2, [0.9]), trial(3, [0.2], CHANCE)],
                                 ["maximize"])
    assert chosen.number == 1 and notes == []  # the warning trial scored worse: nothing to say


def test_when_every_trial_warns_the_best_is_reported_with_its_warning():
    chosen, notes = choose_trial([trial(0, [0.11], CHANCE), trial(1, [0.12], CHANCE)], ["maximize"])
    assert chosen.number == 1
    assert notes == [f"trial #1, reported as best, did not train well: {CHANCE} (every completed trial warns; "
                     "check the search space and the epochs)"]
    assert choose_trial([trial(0, None, state=optuna.trial.TrialState.FAIL)], ["maximize"]) == (None, [])


def test_several_objectives_choose_among_healthy_trials_on_the_first_then_the_next():
    trials = [trial(0, [0.99, 1.0], CHANCE), trial(1, [0.95, 40.0]), trial(2, [0.95, 35.0]), trial(3, [0.5, 1.0])]
    chosen, notes = choose_trial(trials, ["maximize", "minimize"])
    assert chosen.number == 2 and len(notes) == 1 and "trial #0 scored better (0.99/1)" in notes[0]


def test_the_record_keeps_the_warning_for_reports():
    record = TrialRecord.of(trial(5, [0.1], CHANCE))
    assert record.warning == CHANCE and TrialRecord.of(trial(6, [0.3])).warning is None
    assert StudyResult("s", "x", "p", ["acc/val"], [record], 1, record, [record]).notes == []
