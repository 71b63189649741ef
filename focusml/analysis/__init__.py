"""Analysis of finished runs: `compare` (methods against the references, across runs; its pure
pandas part is `summary`) and `filters` (the filter explorer). Runs are read through `focusml.tracking`."""
