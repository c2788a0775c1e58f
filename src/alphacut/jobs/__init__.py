"""Persistent jobs: every accepted request is a job, so no accepted request is ever lost."""
