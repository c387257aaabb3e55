"""The errors photo search reports to the user (one line each, saying what to do)."""


class RetrievalError(ValueError):
    """Bad retrieval input (query, k, index folder, model): a one-line message saying what to do."""


class ImageAccessError(RetrievalError):
    """An image id or path that must not or cannot be served (unknown, outside the folder)."""
