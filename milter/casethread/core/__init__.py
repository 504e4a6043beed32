"""Pure threading logic: stdlib only. No pymilter, lmdb or yaml imports here."""
