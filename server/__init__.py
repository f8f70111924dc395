"""The model server: one process holds the pipeline and serves every UI session and API client."""
