"""Serving budgets (`study.constraints`): what a champion may cost to serve, declared once with the study.

    study:
      constraints: {max_parameters: 2000000, max_latency_ms: 5}   # either or both

A trial over any budget is infeasible: it trains and is scored like any other (the study stays single-objective,
so pruning works as before), but it never becomes champion (tuner.trials.constraints measures and judges it).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Optional

from pydantic import BeforeValidator, model_validator

from deepfm_tuner.model.validation import Float, Int, declared, refuse


def _whole_number(value: Any) -> Any:
    """`2e6` is the count 2,000,000 (YAML reads it as the text '2e6', and `2.0e+6` as a float)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    return int(value) if isinstance(value, float) and value.is_integer() else value


@declared("study.constraints")
class ConstraintsSpec:
    """`max_parameters`: the model's parameter count (embedding tables, first-order weights, MLP) at most this.
    `max_latency_ms`: the median milliseconds to score a batch of 1,000 raw rows through the served (pyfunc)
    path, measured after training on the machine that trained the trial, at most this."""

    max_parameters: Optional[Annotated[Int(1), BeforeValidator(_whole_number)]] = None
    max_latency_ms: Optional[Float("must be a number of milliseconds > 0", gt=0)] = None

    SHAPE: ClassVar[str] = "a mapping such as {max_parameters: 2000000, max_latency_ms: 5}"

    @model_validator(mode="after")
    def _some_budget(self) -> "ConstraintsSpec":
        if self.max_parameters is None and self.max_latency_ms is None:
            raise refuse("give max_parameters, max_latency_ms or both (e.g. {max_parameters: 2000000}), or remove "
                         "the block")
        return self

    def to_dict(self) -> dict[str, float]:
        """The budgets given, by their study-file keys (also the names of the trials' Optuna constraints)."""
        return {key: value for key, value in (("max_parameters", self.max_parameters),
                                              ("max_latency_ms", self.max_latency_ms)) if value is not None}
