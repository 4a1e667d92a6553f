"""Audience questions: submission, triage, votes, on-air."""
