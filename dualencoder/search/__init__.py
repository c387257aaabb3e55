"""Photo search: image sources, the on-disk index, exact and faiss backends, the web server."""
