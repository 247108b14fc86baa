"""`data.tune_rows` and `study.refit` as a study file spells them: the refit is on by default with tune_rows, off
with `refit: false`, allowed without tune_rows, its defaults the study's training values; bad values are one
line and exit 2."""

from __future__ import annotations

import pytest

from deepfm_tuner.tuner.spec.study import RefitSpec, load_study

from support import TINY_STUDY, assert_one_line_error, run


@pytest.mark.parametrize("refit, tune_rows, expected", [
    (None, None, None),  # a study as written before: no sample, no refit
    (None, 2000, RefitSpec(max_epochs=3, patience=2)),  # tune_rows alone: the refit is on, with training's values
    (False, 2000, None),
    (True, None, RefitSpec(max_epochs=3, patience=2)),
    ({"max_epochs": 6}, 0.5, RefitSpec(max_epochs=6, patience=2)),
    ({"patience": 0}, None, RefitSpec(max_epochs=3, patience=0)),
    ({"candidates": 3}, 2000, RefitSpec(max_epochs=3, patience=2, candidates=3)),  # the 3 best on the sample
])
def test_refit_defaults_follow_tune_rows_and_the_training_block(study_file, refit, tune_rows, expected):
    study = {**TINY_STUDY["study"], **({} if refit is None else {"refit": refit})}
    data = {**TINY_STUDY["data"], **({} if tune_rows is None else {"tune_rows": tune_rows})}
    spec = load_study(study_file(study=study, data=data))
    assert spec.refit == expected
    assert spec.data.tune_rows == tune_rows


TUNE_ROWS = ("data.tune_rows must be a number of training rows (an integer >= 1, e.g. 2000000) or a fraction of "
             "the training split in (0, 1) (e.g. 0.1), got")


@pytest.mark.parametrize("section, key, value, message", [
    ("data", "tune_rows", 0, f"{TUNE_ROWS} 0"),
    ("data", "tune_rows", -5, f"{TUNE_ROWS} -5"),
    ("data", "tune_rows", 1.0, f"{TUNE_ROWS} 1.0"),
    ("data", "tune_rows", 2.5, f"{TUNE_ROWS} 2.5"),
    ("data", "tune_rows", "many", f"{TUNE_ROWS} 'many'"),
    ("data", "tune_rows", True, f"{TUNE_ROWS} True"),
    ("study", "refit", {"max_epochs": 0}, "study.refit.max_epochs must be an integer >= 1, got 0"),
    ("study", "refit", {"patience": -1}, "study.refit.patience must be an integer >= 0, got -1"),
    ("study", "refit", {"candidates": 0}, "study.refit.candidates must be an integer >= 1, got 0"),
    ("study", "refit", {"epochs": 3}, "study.refit: unknown key 'epochs'"),
    ("study", "refit", "yes please", "study.refit must be true, false or a mapping such as {max_epochs: 3, "
                                     "patience: 1, candidates: 1}, got 'yes please'"),
])
def test_bad_tune_rows_and_refit_values_are_one_line_errors_with_exit_2(study_file, in_tmp, section, key, value,
                                                                        message):
    path = study_file(**{f"{section}__{key}": value})
    assert_one_line_error(run("tune", path), message)
