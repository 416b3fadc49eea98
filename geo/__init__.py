"""OGC API - Features over the STA store: collections defined from the entity model, CQL2 filters, CRS
handling, and the OpenAPI document, served beside `/v1.1` by the same process."""
