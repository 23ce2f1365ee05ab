"""Versioned SQL migrations, applied in order by :mod:`storage.migrate`.

Each file is ``NNNN_name.sql``: a four-digit version, then a short name. A file that has
been applied anywhere is never edited again (its checksum is recorded); change the schema
with a new file.
"""
