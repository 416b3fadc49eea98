"""The database schema: plain-SQL migrations and how they are applied."""
