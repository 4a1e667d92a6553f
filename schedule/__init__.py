"""The programme schedule engine (issue 3)."""
