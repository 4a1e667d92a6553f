"""The programme: the running order, the take log and the live schedule engine."""
