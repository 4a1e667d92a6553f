"""WebRTC ingest and the programme video (issue 4)."""
