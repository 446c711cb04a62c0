"""What people see: text tables, figures, the study page, and the rich console views.

    tables.py      the study's tables as text, markdown, CSV and JSON
    plots.py       the figures (PNG), for --plot and the study page
    headline_figure.py  the first of them: each EBS's deficit to the best, and the cost the pick minimised
    colours.py     one colour per EBS, the same in every figure
    study_page.py  one self-contained HTML page: the answer first, the evidence under it
    report.py      `accumbench report`: a store read into one of those, written to a terminal or a file
    progress.py    a run's and a sweep's progress in a terminal (the engine's and the sweep's hooks)
    verdicts.py    pick-best's and check-ga's answers in a terminal

Nothing heavy is imported here (matplotlib, pandas): `accumbench --help` stays instant.
"""
