"""`study.reference`: a model name or {type, params}; anything else is one line naming the key and the fix."""

import pytest

from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.spec.study import ReferenceSpec, parse_study

DATA = {"synthetic": {"rows": 1000}}


def reference(value):
    return parse_study({"study": {"reference": value}, "data": DATA}, "s.yaml", "s").reference


def test_a_study_has_no_reference_unless_it_asks_for_one():
    assert parse_study({"data": DATA}, "s.yaml", "s").reference is None
    assert reference(None) is None


def test_the_name_alone_or_a_mapping_with_lightgbm_params():
    assert reference("lightgbm") == ReferenceSpec("lightgbm", {})
    given = reference({"type": "lightgbm", "params": {"num_leaves": 127, "learning_rate": 0.1, "boosting": "dart",
                                                      "extra_trees": True}})
    assert given.params == {"num_leaves": 127, "learning_rate": 0.1, "boosting": "dart", "extra_trees": True}
    assert isinstance(given.params["num_leaves"], int) and given.params["extra_trees"] is True
    assert reference({"params": {"num_leaves": 7}}).type == "lightgbm"  # the one type is the default


@pytest.mark.parametrize("value, message", [
    ("xgboost", "study.reference.type: unknown reference model 'xgboost'; use lightgbm"),
    ({"type": "lgbm"}, "unknown reference model 'lgbm' (did you mean 'lightgbm'?)"),
    ({"parms": {}}, "study.reference: unknown key 'parms' (did you mean 'params'?)"),
    ({"params": {"num_leaves": [7, 15]}},
     "study.reference.params.num_leaves must be a number, true/false or a string, got [7, 15]"),
    ({"params": 3}, "study.reference.params must be a mapping, got 3"),
    (True, "study.reference must be a model name or a mapping such as {type: lightgbm, params:"),
])
def test_a_bad_reference_is_one_line_naming_the_key(value, message):
    with pytest.raises(ConfigError) as info:
        reference(value)
    assert message in str(info.value) and "\n" not in str(info.value)
