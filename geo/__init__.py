"""OGC API - Features over the STA store. Not built yet."""
