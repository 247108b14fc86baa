"""A study's life in one function (tune.tune): stores -> data -> study -> trials (here or in local worker
processes) -> finalists -> summary -> promotion; and the study's handle, summary, report and promotion."""
