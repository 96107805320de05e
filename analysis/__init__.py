"""ibray's analysis: from a results folder to numbers and one self-contained HTML report.

    load.py       find, check and lazily scan results (the Parquet schema is the contract)
    aggregate.py  mean curves and spread over repetitions, the median-deviating repetition
    phases.py     fitting and compression phases, data-processing-inequality violations
    compare.py    estimators against the exact values (the referee table) and `ibray compare`
    charts.py     Altair charts: information planes, MI and accuracy against epoch
    report.py     the HTML report and the `ibray report` command

`analysis` never imports `ibray`.
"""

from analysis.load import Results, ResultsError, load

__all__ = ["Results", "ResultsError", "load"]
