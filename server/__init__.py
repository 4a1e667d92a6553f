"""The wiring: app factory, settings, database, realtime, auth."""
