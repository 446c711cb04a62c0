"""From recorded runs to evidence: runs into cells, the lr tuned per EBS, the pick and what backs it.

    runs.py      the store's runs, each summarised at its best-validation epoch, keyed by its cell
    cells.py     cells aggregated over seeds, the backend comparison, the figures' series
    tuning.py    each EBS at its own best lr; the lr scaling exponent; the lr x EBS grids
    evidence.py  the gradient noise scale and the critical batch size beside the pick
    pick.py      the pick per model, chosen on validation, under each protocol
    shapes.py    pick-best's JSON

It reads the store and computes; it never imports the runtime (engine, sweep) or the presentation.
"""
