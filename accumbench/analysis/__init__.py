"""From recorded runs to evidence: runs into cells, the lr tuned per EBS, the pick and what backs it.

    runs.py      the store's runs, each summarised at its best-validation epoch, keyed by its cell
    cells.py     cells aggregated over seeds, the backend comparison, the figures' series
    tuning.py    each EBS at its own best lr; the lr scaling exponent; the lr x EBS grids
    evidence.py  the gradient noise scale and the critical batch size beside the pick
    pick.py      the pick per model, chosen on validation, under each protocol
    cost.py      the cheapest of the candidates validation cannot tell apart, by counts (load-free)
    answer.py    the pick in one sentence; another signal where the noise scale or B_crit points elsewhere
    headline.py  the headline figure's data: each EBS at its best lr, with its interval and its cost
    shapes.py    pick-best's JSON

It reads the store and computes; it never imports the runtime (engine, sweep) or the presentation.
"""
