"""Photo search: image sources, the on-disk index (store, build), search over it (index,
backends), hubness penalties, result grids and the web server."""
