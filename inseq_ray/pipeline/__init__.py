"""Corpus attribution: blocks, runners (local and Ray Data), storage of results."""
