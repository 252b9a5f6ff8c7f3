"""An index folder on disk: the SQLite catalog (the truth), staging, integrity, backup, exchange."""
