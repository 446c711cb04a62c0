"""`accumbench sweep`: a grid of runs that any number of workers can share, stop and resume.

    spec.py     the grid as the user asked for it (preset < YAML file < flags), one RunConfig per cell
    presets.py  the seed study, the tuned study and the offline demo
    worker.py   one worker: preflight, then claim a cell, train it, record it, until none is left
    local.py    --workers N: several workers on this machine

Nothing is imported here: `sweep --dry-run` reads spec.py alone, without torch.
"""
