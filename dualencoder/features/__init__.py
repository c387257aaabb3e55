"""Tower outputs computed once and cached on disk: what training, validation and the
locked-tower encoders read instead of running a frozen tower again.

- `plan`: which tower outputs a training config can read from a cache (pooled features of a
  locked tower, boundary states of a partly trained one) and why not when it cannot.
- `keys`: content keys (records, tower weights, boundary, sizes, precision, nothing else).
- `store`: the files: atomic `.npz` tables, and row stores that stream from disk.
- `compute`: the tower passes that fill them.
- `pairs`: `CachedPairs`, training batches from the caches in the streaming pipeline's order.
"""
