"""Test and demo helpers that users may use too: a local CloudZero API double and a throwaway PostgreSQL.

Nothing in the provider's runtime path imports this package.
"""
