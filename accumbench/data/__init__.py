"""Data: `pipeline` turns a dataset's tables into tokenized splits (text columns, the 8:1:1 split, label
ids, the token cache, padding per micro-batch); `sources` reads the tables (built-in, a file, a directory, the
hub); `demo` generates the offline demo data."""
