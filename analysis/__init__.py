"""ibray's analysis: from a results folder to numbers and one self-contained HTML report.

    load.py       find, check and lazily scan results (the Parquet schema is the contract)
    aggregate.py  mean curves and spread over repetitions, the median-deviating repetition
    phases.py     fitting and compression phases, data-processing-inequality violations
    compare.py    estimators against the exact values (the referee table) and `ibray compare`
    charts.py     Altair charts: information planes, MI and accuracy against epoch
    output.py     atomic writes, and the output-path checks the report and compare share
    tables.py     every aggregation the report shows, collected in one pass (Tables)
    sections.py   the report's page: its sections from Tables, top down
    page.py       the report's HTML: escaping, tables, CSS and script, the self-contained file
    report.py     the `ibray report` command: load, aggregate, lay out, render, write
    live.py       the report rewritten while a sweep runs (`ibray sweep --report`)

`analysis` never imports `ibray`.
"""

from analysis.load import Results, ResultsError, load

__all__ = ["Results", "ResultsError", "load"]
