"""accumbench: which effective batch size should you fine-tune your BERT-family classifier at?

Kept import-light on purpose: `accumbench --help` must not pull in torch or transformers.
"""

__version__ = "0.1.0"
