"""The filter explorer (`focusml filters`): which last-layer filters respond to the masked region.

- `stats`: the analysis of a model on images with masks (share in mask, class weights,
  top-activating crops) and the pairing of two models' filters; torch only;
- `report`: the HTML page (a Jinja2 template), filters.json and the figures;
- `explore`: from a run id to a report logged to that run (through `focusml.tracking`).
"""

from focusml.analysis.filters.explore import explore
from focusml.analysis.filters.report import Report, filter_figure, shares_figure, write_report
from focusml.analysis.filters.stats import (WEAK, Analysis, Crop, FilterStat, analyse, match_filters, pick_rows,
                                            receptive_field)

__all__ = ["WEAK", "Analysis", "Crop", "FilterStat", "Report", "analyse", "explore", "filter_figure", "match_filters",
           "pick_rows", "receptive_field", "shares_figure", "write_report"]
