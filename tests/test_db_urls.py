"""Where the run database is: --db or $ACCUMBENCH_DB or ./runs.db as a URL, the file behind an SQLite
URL, and a URL as it is printed (without its password)."""

from accumbench.store import resolve_db_url, sqlite_path


def test_resolve_db_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACCUMBENCH_DB", raising=False)
    assert resolve_db_url(None) == f"sqlite:///{tmp_path.resolve() / 'runs.db'}"
    monkeypatch.setenv("ACCUMBENCH_DB", "sub/x.db")
    assert resolve_db_url(None) == f"sqlite:///{tmp_path.resolve() / 'sub' / 'x.db'}"
    monkeypatch.setenv("ACCUMBENCH_DB", "postgresql://u@h/db")
    assert resolve_db_url(None) == "postgresql://u@h/db"
    assert resolve_db_url("rel.db") == f"sqlite:///{tmp_path.resolve() / 'rel.db'}"
    assert resolve_db_url("/abs/r.db") == "sqlite:////abs/r.db"
    assert resolve_db_url("sqlite:///relative.db") == "sqlite:///relative.db"


def test_sqlite_path():
    assert str(sqlite_path("sqlite:////abs/r.db")) == "/abs/r.db"
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://u@h/db") is None


def test_a_database_is_printed_without_its_password():
    from accumbench.store import display_url

    assert display_url("postgresql+psycopg://user:s3cret@db-host:5432/runs") == "postgresql+psycopg://user:***@db-host:5432/runs"
    assert display_url("sqlite:////tmp/x/runs.db") == "/tmp/x/runs.db"
