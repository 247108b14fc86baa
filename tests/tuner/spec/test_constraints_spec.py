"""`study.constraints`: serving budgets declared with the study, validated when the file is read."""

from __future__ import annotations

import pytest

from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.spec.study import load_study


def test_budgets_are_read_as_given_and_absent_by_default(study_file):
    spec = load_study(study_file(study__constraints={"max_parameters": 2000000, "max_latency_ms": 5}))
    assert spec.constraints.to_dict() == {"max_parameters": 2000000, "max_latency_ms": 5.0}
    assert load_study(study_file(study__constraints={"max_latency_ms": 2.5})).constraints.to_dict() == {
        "max_latency_ms": 2.5}
    assert load_study(study_file()).constraints is None


def test_a_parameter_budget_may_be_written_in_scientific_notation(study_file):
    assert load_study(study_file(study__constraints={"max_parameters": "2e6"})).constraints.max_parameters == 2000000


@pytest.mark.parametrize(("constraints", "message"), [
    ({}, "study.constraints: give max_parameters, max_latency_ms or both"),
    ({"max_parameters": 0}, "study.constraints.max_parameters must be an integer >= 1, got 0"),
    ({"max_parameters": 1.5}, "study.constraints.max_parameters must be an integer >= 1, got 1.5"),
    ({"max_latency_ms": 0}, "study.constraints.max_latency_ms must be a number of milliseconds > 0, got 0"),
    ({"max_latency": 5}, "unknown key 'max_latency' (did you mean 'max_latency_ms'?)"),
    ("fast", "study.constraints must be a mapping such as {max_parameters: 2000000, max_latency_ms: 5}"),
])
def test_a_bad_budget_is_one_line_naming_the_key(study_file, constraints, message):
    with pytest.raises(ConfigError) as caught:
        load_study(study_file(study__constraints=constraints))
    assert message in str(caught.value) and "\n" not in str(caught.value)
